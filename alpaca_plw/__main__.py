"""`python -m alpaca_plw ...` (also what `torchrun -m alpaca_plw train ...` runs)."""

from alpaca_plw.cli import main

if __name__ == "__main__":
    main()
