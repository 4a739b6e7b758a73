"""User-facing errors of the headless core.

Every error the astronomer can cause (a bad file, a position outside a field, an unreachable
server) is a subclass of :class:`SsaldError` with a message that names the file or value. The
CLI prints the message and exits with status 2; the GUI shows it in a dialog and keeps running.
"""

from __future__ import annotations


class SsaldError(Exception):
    """Base class of errors caused by input or environment, not by a bug."""


class DataFileError(SsaldError):
    """A file that cannot be read as what it claims to be (truncated, not FITS, no WCS...)."""


class FieldMismatchError(SsaldError):
    """Frames that do not belong to one field were given as one frame set."""


class OutsideFieldError(SsaldError):
    """A sky position that the field (or the requested cutout) does not cover."""


class SpectrumFormatError(DataFileError):
    """A FITS file that is not a spectrum layout this reader knows."""


class RemoteError(SsaldError):
    """A server that is unreachable, silent past the timeout, or answered with an error."""


class InvalidQueryError(SsaldError):
    """A value that cannot go into an SDSS query (not a finite number, out of range...)."""
