@echo off
REM Main job on Windows: creates .venv when missing, installs, then runs the pipeline
REM (train with PRESET, default auto; predict; check; score). Further arguments go to scripts\pipeline.py.
setlocal
set HERE=%~dp0
if "%PRESET%"=="" set PRESET=auto
if "%VENV%"=="" set VENV=%HERE%.venv
if "%~1"=="--help" goto help
if "%~1"=="-h" goto help

REM VENV=none uses the Python already on PATH, as in start_training_qwen2.sh.
if /I "%VENV%"=="none" (
  set PY=python
) else (
  if not exist "%VENV%\Scripts\python.exe" (
    echo creating virtual environment %VENV%
    python -m venv "%VENV%"
    if errorlevel 1 exit /b 1
  )
  set PY=%VENV%\Scripts\python.exe
)

REM The package first (it holds the torch installer), then the torch build that fits the GPU nvidia-smi
REM shows (scripts\install_torch.py; TORCH_INDEX_URL overrides), then the rest, which keeps that torch.
REM No parsing here: every decision is in Python. "call" lets PY be a .bat/.cmd shim (pyenv-win)
REM and still return (the pipeline, last, needs none: call would expand % in its arguments twice);
REM "if errorlevel 1" instead of "||", which Wine's cmd (the test runs this file under it) gets wrong.
call "%PY%" -c "import emotion_summary, torch, transformers, peft, bitsandbytes" 2>nul
if errorlevel 1 (
  echo installing requirements ^(torch first^)
  call "%PY%" -m pip install -q --no-deps -e "%HERE%."
  if errorlevel 1 exit /b 1
  call "%PY%" "%HERE%scripts\install_torch.py"
  if errorlevel 1 exit /b 1
  call "%PY%" -m pip install -q -r "%HERE%requirements_qwen2.txt"
  if errorlevel 1 exit /b 1
)
REM Stops when nvidia-smi shows a GPU that torch or bitsandbytes cannot use, with the command that fixes it.
call "%PY%" "%HERE%scripts\install_torch.py" --check
if errorlevel 1 exit /b 1

"%PY%" "%HERE%scripts\pipeline.py" --preset %PRESET% %*
exit /b %errorlevel%

:help
REM Like the .sh: the pipeline's options, without creating or installing anything.
echo Main job: creates .venv when missing, installs, then runs scripts\pipeline.py (PRESET=auto^|8gb^|12gb^|24gb^|cpu^|cpu-smoke).
set PYTHONPATH=%HERE%src;%PYTHONPATH%
set HPY=python
if exist "%VENV%\Scripts\python.exe" set HPY=%VENV%\Scripts\python.exe
"%HPY%" "%HERE%scripts\pipeline.py" --help
exit /b %errorlevel%
