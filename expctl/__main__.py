"""``python -m expctl`` is the ``expctl`` command."""

from expctl.cli import script

if __name__ == "__main__":
    script()
