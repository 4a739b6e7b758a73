"""SSALD desktop: search SDSS imaging for dual AGN."""

__version__ = "0.1.0"
