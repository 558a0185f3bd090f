@echo off
::: Install the ACE-Step LoRA Trainer into env\ (Windows). Safe to re-run: it reuses env\ and
::: installs only what is missing or of the wrong version.
:::
::: Usage: install.bat [--cpu or --cuda] [--dev]
:::   --cpu    install the CPU build of torch (no NVIDIA GPU, or you do not want to use it)
:::   --cuda   install a CUDA build of torch (needs a working nvidia-smi)
:::   --dev    also install the test tools (requirements-dev.txt)
::: Environment variables (set NAME=value before running):
:::   ACESTEP_TORCH=auto, cpu or cuda  same as the flags; auto (default) = CUDA when nvidia-smi works
:::   ACESTEP_TORCH_INDEX_URL=URL      the wheel index torch comes from, instead of the one picked
:::                                    from the driver's CUDA version (CUDA) or PyPI (CPU)
:::   ACESTEP_INSTALLER=pip or uv      default: uv when it is on PATH, else pip
:::   ACESTEP_PYTHON=py -3.12          the Python that creates env\ (3.10 to 3.12)
setlocal enabledelayedexpansion

set "TORCH_VERSION=2.13.0"
set "PYTORCH_INDEX=https://download.pytorch.org/whl"

rem Work in the script's folder; env\ paths below are relative to it (no quoting trouble).
cd /d "%~dp0"
if errorlevel 1 (
    set "MSG=cannot change to the folder of install.bat: %~dp0"
    goto fail
)
set "ENV_PYTHON=env\Scripts\python.exe"

rem ---------------------------------------------------------------- flags
set "TORCH_MODE=%ACESTEP_TORCH%"
if "%TORCH_MODE%"=="" set "TORCH_MODE=auto"
set "WITH_DEV=0"
:parse_flags
if "%~1"=="" goto flags_done
if /i "%~1"=="--cpu" (
    set "TORCH_MODE=cpu"
    goto next_flag
)
if /i "%~1"=="--cuda" (
    set "TORCH_MODE=cuda"
    goto next_flag
)
if /i "%~1"=="--dev" (
    set "WITH_DEV=1"
    goto next_flag
)
if /i "%~1"=="--help" goto usage
if /i "%~1"=="-h" goto usage
set "MSG=unknown option '%~1'; see: install.bat --help"
goto fail
:next_flag
shift
goto parse_flags
:usage
for /f "usebackq delims=" %%L in (`findstr /b /c:":::" "%~f0"`) do (
    set "LINE=%%L"
    echo(!LINE:~4!
)
exit /b 0
:flags_done
if /i "%TORCH_MODE%"=="auto" goto mode_ok
if /i "%TORCH_MODE%"=="cpu" goto mode_ok
if /i "%TORCH_MODE%"=="cuda" goto mode_ok
set "MSG=ACESTEP_TORCH=%TORCH_MODE%: use auto, cpu or cuda"
goto fail
:mode_ok

rem ---------------------------------------------------------------- env\
echo.
echo === Python environment: %CD%\env ===
if exist "%ENV_PYTHON%" goto reuse_env
if not defined ACESTEP_PYTHON goto find_python
set "PY=%ACESTEP_PYTHON%"
goto have_python
:find_python
rem The py launcher: newest of 3.12, 3.11, 3.10; else "python" from PATH.
set "PY="
where py >nul 2>&1
if errorlevel 1 goto python_from_path
for %%V in (3.12 3.11 3.10) do (
    if not defined PY (
        py -%%V -c "import sys" >nul 2>&1
        if not errorlevel 1 set "PY=py -%%V"
    )
)
:python_from_path
if not defined PY set "PY=python"
:have_python
%PY% -c "import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)"
if errorlevel 1 (
    set "MSG=!PY! is missing or is not Python 3.10, 3.11 or 3.12. Install one from python.org, or set ACESTEP_PYTHON=py -3.12"
    goto fail
)
%PY% -m venv env
if errorlevel 1 (
    set "MSG=!PY! -m venv env failed. Delete the env folder and run install.bat again."
    goto fail
)
echo created env\ with %PY%
goto env_ready
:reuse_env
"%ENV_PYTHON%" -c "import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)"
if errorlevel 1 (
    set "MSG=env\ exists but its Python does not run or is not 3.10-3.12. Delete the env folder and run install.bat again."
    goto fail
)
echo reusing env\
:env_ready

rem ---------------------------------------------------------------- installer
set "INSTALLER=%ACESTEP_INSTALLER%"
if not "%INSTALLER%"=="" goto installer_chosen
set "INSTALLER=pip"
where uv >nul 2>&1
if not errorlevel 1 set "INSTALLER=uv"
:installer_chosen
if /i "%INSTALLER%"=="uv" (
    where uv >nul 2>&1
    if errorlevel 1 (
        set "MSG=ACESTEP_INSTALLER=uv but uv is not on PATH"
        goto fail
    )
    set "INSTALL=uv pip install --python %ENV_PYTHON%"
    set "UNINSTALL=uv pip uninstall --python %ENV_PYTHON%"
    goto installer_set
)
if /i "%INSTALLER%"=="pip" (
    set "INSTALL=%ENV_PYTHON% -m pip install"
    set "UNINSTALL=%ENV_PYTHON% -m pip uninstall -y"
    goto installer_set
)
set "MSG=ACESTEP_INSTALLER=%INSTALLER%: use pip or uv"
goto fail
:installer_set
echo installer: %INSTALL%

rem ---------------------------------------------------------------- torch
if /i not "%TORCH_MODE%"=="auto" goto torch_mode_known
set "TORCH_MODE=cpu"
where nvidia-smi >nul 2>&1
if errorlevel 1 goto torch_mode_known
nvidia-smi >nul 2>&1
if not errorlevel 1 set "TORCH_MODE=cuda"
:torch_mode_known
echo.
echo === torch %TORCH_VERSION% (%TORCH_MODE%) ===
set "SPEC=torch==%TORCH_VERSION%"
set "INDEX=%ACESTEP_TORCH_INDEX_URL%"
if defined INDEX goto torch_index_known
if /i "%TORCH_MODE%"=="cpu" goto torch_index_known

rem CUDA: pick the PyTorch wheel index from the driver's "CUDA Version" printed by nvidia-smi.
set "CUDA_LINE="
for /f "delims=" %%L in ('nvidia-smi 2^>nul ^| findstr /c:"CUDA Version"') do set "CUDA_LINE=%%L"
if not defined CUDA_LINE (
    set "MSG=CUDA torch was asked for but nvidia-smi does not run or prints no CUDA Version. Install the NVIDIA driver, set ACESTEP_TORCH_INDEX_URL, or use --cpu."
    goto fail
)
set "CUDA_REST=!CUDA_LINE:*CUDA Version:=!"
set "CUDA_VERSION="
for /f "tokens=1" %%V in ("!CUDA_REST!") do set "CUDA_VERSION=%%V"
set "CUDA_MAJOR=0"
set "CUDA_MINOR=0"
for /f "tokens=1,2 delims=." %%a in ("!CUDA_VERSION!") do (
    set "CUDA_MAJOR=%%a"
    set "CUDA_MINOR=%%b"
)
set /a CUDA_NUMBER=CUDA_MAJOR*100+CUDA_MINOR
echo driver supports CUDA !CUDA_VERSION!
set "CUDA_TAG="
if !CUDA_NUMBER! GEQ 1206 set "CUDA_TAG=cu126"
if !CUDA_NUMBER! GEQ 1208 set "CUDA_TAG=cu128"
if !CUDA_NUMBER! GEQ 1300 set "CUDA_TAG=cu130"
if not defined CUDA_TAG (
    set "MSG=the NVIDIA driver supports CUDA !CUDA_VERSION! only; torch %TORCH_VERSION% needs CUDA 12.6 or newer. Update the driver from nvidia.com/drivers, or use --cpu."
    goto fail
)
set "INDEX=%PYTORCH_INDEX%/!CUDA_TAG!"
:torch_index_known
rem PyTorch's own indexes (.../whl/cu128, .../whl/cpu) name the build: pin it exactly.
if not defined INDEX goto torch_spec_known
set "INDEX_TAG="
for %%P in (!INDEX:/= !) do set "INDEX_TAG=%%P"
rem (%%-expansion here: a pipe runs its left side in a new cmd without delayed expansion)
echo %INDEX_TAG%| findstr /r /x /i "cpu cu[0-9][0-9]*" >nul
if not errorlevel 1 set "SPEC=torch==%TORCH_VERSION%+!INDEX_TAG!"
:torch_spec_known

rem A CPU build satisfies "torch==2.13.0" too: remove the wrong build first (and back).
set "HAVE_TORCH="
for /f "tokens=2" %%T in ('%ENV_PYTHON% -m pip show torch 2^>nul ^| findstr /b /c:"Version:"') do set "HAVE_TORCH=%%T"
if not defined HAVE_TORCH goto torch_install
set "WRONG_BUILD=0"
if /i "%TORCH_MODE%"=="cuda" if not "!HAVE_TORCH:+cpu=!"=="!HAVE_TORCH!" set "WRONG_BUILD=1"
if /i "%TORCH_MODE%"=="cpu" if not "!HAVE_TORCH:+cu=!"=="!HAVE_TORCH!" set "WRONG_BUILD=1"
if "!WRONG_BUILD!"=="0" goto torch_install
echo replacing torch !HAVE_TORCH! (wrong build for %TORCH_MODE%)
%UNINSTALL% torch
if errorlevel 1 goto step_failed
:torch_install
if defined INDEX (
    echo from !INDEX!
    %INSTALL% "!SPEC!" --index-url "!INDEX!"
) else (
    %INSTALL% "!SPEC!"
)
if errorlevel 1 goto step_failed

rem ---------------------------------------------------------------- the rest
echo.
echo === requirements.txt ===
%INSTALL% -r requirements.txt
if errorlevel 1 goto step_failed
rem torchao: Linux x86_64 wheels only, so nothing on Windows.
echo.
echo === the trainer itself (editable: acestep-trainer command) ===
%INSTALL% -e .
if errorlevel 1 goto step_failed
if not "%WITH_DEV%"=="1" goto verify
echo.
echo === test tools (requirements-dev.txt) ===
%INSTALL% -r requirements-dev.txt
if errorlevel 1 goto step_failed

:verify
echo.
echo === checking the environment ===
%ENV_PYTHON% -m acestep.environment
if errorlevel 1 (
    set "MSG=the environment check above failed; fix what it names and run install.bat again"
    goto fail
)
echo.
echo Installed. Start the trainer with: %CD%\start.bat
exit /b 0

:step_failed
set "MSG=the step above failed (see its output); fix it and run install.bat again"
:fail
echo.
echo ERROR: !MSG!
exit /b 1
