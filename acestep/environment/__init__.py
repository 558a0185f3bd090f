"""Is this Python environment able to run the trainer? Check it, print it, say how to fix it.

Imports only the standard library at import time: `launch.py` and the install scripts use this
package before they know that torch, gradio and the rest are installed.

What "able to run" means:
1. the interpreter is the project's own `env/` (made by install.sh / install.bat), unless the
   environment variable ``ACESTEP_ALLOW_OTHER_ENV=1`` accepts another one (conda, docker, a
   system-wide install). The packages are checked fully either way;
2. every package in `REQUIRED_PACKAGES` really imports (a package that is installed but fails to
   import, such as a CUDA torch with missing libraries, counts as broken), and the project itself
   is pip-installed in editable mode from this folder (job processes run its CLI).
`OPTIONAL_PACKAGES` and ffmpeg are reported, never required.

Run ``python -m acestep.environment`` to print the table; it exits 1 when something required is
missing or broken, or when the interpreter is not the project's environment.

Modules: `location` (which env, fix commands), `packages` (import checks), `torch_info` (devices),
`report` (the whole check, the table, the command line).
"""

from acestep.environment.location import (ALLOW_OTHER_ENV_VARIABLE, Problem, fix_command,
                                          location_problem, other_env_allowed, project_env_dir,
                                          project_root, running_in_project_env)
from acestep.environment.packages import (OPTIONAL_PACKAGES, PROJECT_DISTRIBUTION,
                                          REQUIRED_PACKAGES, PackageState, PackageStatus,
                                          check_package, check_packages, check_project_install)
from acestep.environment.report import (EnvironmentReport, check_environment, explain_problem,
                                        format_report, format_table, main)
from acestep.environment.torch_info import TorchSummary, torch_summary

__all__ = [
    "ALLOW_OTHER_ENV_VARIABLE", "OPTIONAL_PACKAGES", "PROJECT_DISTRIBUTION", "REQUIRED_PACKAGES",
    "EnvironmentReport", "PackageState", "PackageStatus", "Problem", "TorchSummary",
    "check_environment", "check_package", "check_packages", "check_project_install",
    "explain_problem", "fix_command", "format_report", "format_table", "location_problem",
    "main", "other_env_allowed", "project_env_dir", "project_root", "running_in_project_env",
    "torch_summary",
]
