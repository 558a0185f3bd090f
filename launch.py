"""Start the ACE-Step LoRA Trainer web UI: read the flags, check the environment, launch Gradio.

Runs under any Python 3 until the checks pass, so that `python3 launch.py --help` and the
"run ./install.sh first" message work before anything is installed. Use ./start.sh (Linux, macOS)
or start.bat (Windows), which run this file with the project's env/.

Exit status: 0 normal end; 1 `--check` found a problem; 2 wrong flags (for example --share-lan
without --auth); 3 the environment is not ready (the message names the fix).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
LAN_HOST = "0.0.0.0"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of launch.py (and of start.sh / start.bat, which pass them on)."""
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Start the ACE-Step LoRA Trainer web UI in your browser. Checks the Python "
                    "environment first and stops with the fix command when something is missing.",
        epilog="Environment variables: ACESTEP_CHECKPOINTS_DIR (default for --checkpoints-dir); "
               "ACESTEP_WORKSPACE (default for --workspace); "
               "ACESTEP_ALLOW_OTHER_ENV=1 runs with a Python other than the project's env/ "
               "(conda, docker); its packages are still checked.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the web server listens on (default: 127.0.0.1, this "
                             "computer only). Any other address needs --auth or --auth-file.")
    parser.add_argument("--port", type=int, default=7860,
                        help="port of the web server (default: 7860)")
    parser.add_argument("--share-lan", action="store_true",
                        help=f"listen on {LAN_HOST} so other computers on your network can open "
                             "the UI; refuses to start without --auth or --auth-file")
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD", default=[],
                        help="require this login in the browser (repeat for several users). "
                             "Other users of this computer can see command lines: prefer "
                             "--auth-file on shared machines.")
    parser.add_argument("--auth-file", type=Path, metavar="PATH",
                        help="file with one USER:PASSWORD login per line (blank lines and lines "
                             "starting with # are skipped)")
    parser.add_argument("--no-auth", action="store_true",
                        help="allow --share-lan or a non-local --host WITHOUT a login (anyone on the "
                             "network can then use the app and read its files); a warning is printed")
    parser.add_argument("--checkpoints-dir", type=Path, metavar="PATH",
                        help="folder holding the ACE-Step models (downloads go there too). "
                             "Default: $ACESTEP_CHECKPOINTS_DIR, else <project>/checkpoints")
    parser.add_argument("--workspace", type=Path, metavar="PATH",
                        help="folder the app works in: audio/, datasets/, tensors/, runs/, outputs/, "
                             "profiles/ (created when missing). Default: $ACESTEP_WORKSPACE, else "
                             "<project>/workspace (<project>/demo with --demo)")
    parser.add_argument("--data-root", type=Path, action="append", default=[], metavar="PATH",
                        help="another folder the app may read and write, such as your music folder "
                             "(repeatable). The app serves and accepts paths only inside the workspace, "
                             "the checkpoints folder and these")
    parser.add_argument("--demo", action="store_true",
                        help="offline demo: tiny random models and a few short songs made on this "
                             "computer, in their own workspace; no download, nothing real is trained")
    parser.add_argument("--check", action="store_true",
                        help="only check the environment: print the package / torch / GPU table "
                             "and exit 0 (ready) or 1 (something to fix), without starting the UI")
    return parser


def parse_login(text: str, where: str) -> tuple[str, str]:
    """Split 'user:password' at the first ':' (the password may contain more); spaces around
    either part are dropped. Raises ValueError naming `where` when a part is empty."""
    user, sep, password = (part.strip() for part in text.partition(":"))
    if not sep or not user or not password:
        raise ValueError(f"{where}: expected USER:PASSWORD with both parts non-empty")
    return user, password


def read_auth_file(path: Path) -> list[tuple[str, str]]:
    """Logins from `path`, one USER:PASSWORD per line. Raises ValueError naming the file and
    line for an unreadable file, a malformed line, or a file without any login."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ValueError(f"--auth-file {path}: cannot read it ({error.strerror})") from error
    logins = [parse_login(line.strip(), f"--auth-file {path}, line {number}")
              for number, line in enumerate(lines, start=1)
              if line.strip() and not line.strip().startswith("#")]
    if not logins:
        raise ValueError(f"--auth-file {path}: no USER:PASSWORD line in it")
    return logins


def is_loopback(host: str) -> bool:
    """True for addresses only this computer can reach (127.x, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_settings(args: argparse.Namespace) -> dict:
    """Turn the flags into launch_app's keyword arguments. Raises ValueError with the message
    for the user when the flags contradict each other or would expose the UI without a login."""
    auth = [parse_login(text, "--auth") for text in args.auth]
    if args.auth_file is not None:
        auth += read_auth_file(args.auth_file)
    host = args.host
    if args.share_lan:
        if host not in ("127.0.0.1", LAN_HOST):
            raise ValueError(f"--share-lan listens on {LAN_HOST}; do not combine it with "
                             f"--host {host}")
        host = LAN_HOST
    if auth and args.no_auth:
        raise ValueError("--no-auth contradicts --auth / --auth-file; keep one")
    if not is_loopback(host) and not auth:
        flag = "--share-lan" if args.share_lan else f"--host {host}"
        if not args.no_auth:
            raise ValueError(f"{flag} lets other computers open the UI, so it needs a login: add "
                             f"--auth USER:PASSWORD or --auth-file PATH (or --no-auth to allow it anyway)")
        print(f"launch.py: warning: {flag} --no-auth: anyone who can reach port {args.port} can use the app "
              "and read the files under its folders", file=sys.stderr)
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: use a port between 1 and 65535")
    return {"host": host, "port": args.port, "auth": auth or None,
            "checkpoints_dir": checkpoints_dir(args.checkpoints_dir),
            "workspace_dir": workspace_dir(args.workspace, args.demo),
            "data_roots": tuple(path.expanduser().resolve() for path in args.data_root), "demo": args.demo}


def checkpoints_dir(flag: Path | None) -> Path:
    """--checkpoints-dir, else $ACESTEP_CHECKPOINTS_DIR, else <project>/checkpoints; absolute
    (relative paths are taken from the folder the user started in). The same default as the CLI."""
    if flag is not None:
        return flag.expanduser().resolve()
    from acestep.models.checkpoints import default_checkpoints_dir  # standard library only
    return default_checkpoints_dir()


def workspace_dir(flag: Path | None, demo: bool) -> Path:
    """--workspace, else $ACESTEP_WORKSPACE, else <project>/workspace (<project>/demo for the demo,
    so its tiny models and songs never mix with real work); absolute."""
    if flag is not None:
        return flag.expanduser().resolve()
    configured = os.environ.get("ACESTEP_WORKSPACE", "").strip()
    if configured and not demo:
        return Path(configured).expanduser().resolve()
    return ROOT / ("demo" if demo else "workspace")


def environment_ready() -> bool:
    """Where we run (cheap, in this process), then every package in a child process, so that
    torch (and a CUDA context) never load into the UI server. Prints what is wrong and the fix."""
    from acestep import environment
    problem = environment.location_problem()
    if problem is not None:
        print(environment.explain_problem(problem), file=sys.stderr)
        return False
    check = subprocess.run([sys.executable, "-m", "acestep.environment"], cwd=ROOT)
    return check.returncode == 0


def main(argv: list[str] | None = None) -> int:
    """Parse flags, check the environment, start the UI. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(args)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"launch.py: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        from acestep import environment
        return environment.main([])
    if not environment_ready():
        return EXIT_ENVIRONMENT
    from acestep.ui.app import launch_app  # imported only now: it needs gradio
    launch_app(**settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
