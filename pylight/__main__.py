"""`python -m pylight`: run the command-line entry point."""

from pylight.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
