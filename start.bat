@echo off
rem Start the ACE-Step LoRA Trainer with the project's env\ (made by install.bat).
rem Every argument goes to launch.py: start.bat --help lists them. The current folder is kept,
rem so relative paths you pass (--auth-file, --checkpoints-dir) are taken from where you are.
setlocal
set "HERE=%~dp0"
rem No parenthesised block here: a folder like "Program Files (x86)" would end it early.
if exist "%HERE%env\Scripts\python.exe" goto run
echo No environment at %HERE%env: run %HERE%install.bat first.
exit /b 1
:run
"%HERE%env\Scripts\python.exe" "%HERE%launch.py" %*
exit /b %errorlevel%
