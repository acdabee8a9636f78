"""``python -m lungxray.cli``: the ``lungxray`` command."""

from lungxray.cli.commands import main

if __name__ == "__main__":
    main()
