"""The ``charset`` request param of ``mvi_ocr``: which characters a line may be read as.

A charset is either one of the named sets below or a literal string of the allowed characters (order and
repeats do not matter). A name wins over the literal reading of the same string: to allow exactly the
letters of a name, write them in another order.

========== ============================================================================================
name       characters
========== ============================================================================================
``digits`` ``0123456789``
``upper``  ``A`` to ``Z``
``alnum``  digits and ``A`` to ``Z``
``code``   digits and ``A`` to ``Z`` without ``I``, ``O`` and ``Q``: the alphabet of vehicle
           identification numbers and of most printed part and lot codes, which leave out the letters a
           reader confuses with ``1`` and ``0``. A round glyph is then read as ``0``, a bar as ``1``.
``hex``    ``0123456789ABCDEF``
========== ============================================================================================

Without a charset every character the recogniser knows may come out (the PP-OCRv4 dictionary: about 6,600
Chinese and Latin characters, digits, punctuation and the space).
"""

import string

NAMED_CHARSETS = {
    "digits": string.digits,
    "upper": string.ascii_uppercase,
    "alnum": string.digits + string.ascii_uppercase,
    "code": string.digits + "".join(c for c in string.ascii_uppercase if c not in "IOQ"),
    "hex": string.digits + "ABCDEF",
}

#: The longest literal charset accepted: far beyond any product code's alphabet, small enough that a client
#: cannot make every request rebuild a huge class mask.
MAX_CHARSET_LENGTH = 1024


class CharsetError(ValueError):
    """A charset param that cannot be used; the message says why, for the caller."""


def charset_characters(charset):
    """The characters a ``charset`` param allows, sorted and without repeats.

    Raises CharsetError for a value that is not a non-empty string of at most MAX_CHARSET_LENGTH characters.
    """
    if not isinstance(charset, str):
        raise CharsetError(f"params.charset must be a string (a set name or the allowed characters), "
                           f"got {type(charset).__name__}")
    if not charset:
        raise CharsetError("params.charset is empty; leave it out to allow every character")
    if len(charset) > MAX_CHARSET_LENGTH:
        raise CharsetError(f"params.charset holds {len(charset)} characters, more than {MAX_CHARSET_LENGTH}")
    return "".join(sorted(set(NAMED_CHARSETS.get(charset, charset))))
