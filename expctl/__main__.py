"""``python -m expctl`` is the ``expctl`` command."""

from expctl.cli import main

if __name__ == "__main__":
    main()
