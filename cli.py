"""Root shim: `python cli.py ...` is `alpaca-plw ...`."""

from alpaca_plw.cli import main

if __name__ == "__main__":
    main()
