"""The one base class of the errors a user can fix by changing their input (a data file, a folder, a config value,
a path): :class:`InputError`. ``lightning-ae`` prints such an error as one line and exits with status 2; the
traceback is for bugs (``--debug`` shows it for these too). A neutral module: it imports nothing of the library.

>>> class MissingFile(InputError, FileNotFoundError):
...     pass
>>> isinstance(MissingFile("x"), OSError)
True
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input the user can fix; the message is the one line the command line shows (it names the bad thing)."""
