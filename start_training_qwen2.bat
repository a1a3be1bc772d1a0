@echo off
REM Main job on Windows: creates .venv when missing, installs, then runs the pipeline
REM (train with PRESET, default auto; predict; check; score). Further arguments go to scripts\pipeline.py.
setlocal
set HERE=%~dp0
if "%PRESET%"=="" set PRESET=auto
if "%VENV%"=="" set VENV=%HERE%.venv

REM VENV=none uses the Python already on PATH, as in start_training_qwen2.sh.
if /I "%VENV%"=="none" (
  set PY=python
) else (
  if not exist "%VENV%\Scripts\python.exe" (
    echo creating virtual environment %VENV%
    python -m venv "%VENV%" || exit /b 1
  )
  set PY=%VENV%\Scripts\python.exe
)

"%PY%" -c "import emotion_summary, torch, transformers, peft, bitsandbytes" 2>nul
if errorlevel 1 (
  echo installing requirements ^(torch first^)
  "%PY%" -m pip install -q torch==2.13.0 || exit /b 1
  "%PY%" -m pip install -q -r "%HERE%requirements_qwen2.txt" || exit /b 1
  "%PY%" -m pip install -q --no-deps -e "%HERE%." || exit /b 1
)

"%PY%" "%HERE%scripts\pipeline.py" --preset %PRESET% %*
exit /b %errorlevel%
