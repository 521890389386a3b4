"""Collecting the images a harness run sends: a folder, a list file, or a single image.

Every image gets a *name*: the string written to results.jsonl as "file", sent to the app as the instance's
``attribute.filename``, and matched against label files. Names use forward slashes on every platform, so a
label file written on one machine scores a run made on another.

A name is always valid Unicode: a file name on disk that is not valid UTF-8 (a Latin-1 "café.png" unzipped
from a Windows archive) gets its undecodable bytes written as ``\\xNN`` (see `display_name`), while the image is
still read by its real path. Python keeps such bytes as lone surrogates, which no UTF-8 file, JSON document or
protobuf string can hold, so a raw name would end the whole run at its first write.
"""
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class InputImage:
    """One image of a run: where to read it, and the name it is reported and matched under."""

    path: Path
    name: str


def display_name(text):
    """``text`` (a str from the file system, possibly holding surrogate-escaped bytes) as valid Unicode.

    Bytes that are not UTF-8 become ``\\xNN``; a name that is valid UTF-8 is returned unchanged.
    """
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:
        # Lone surrogates that did not come from the file system (a name a caller made up): escape them as such.
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def is_image_path(path):
    """True when the path's extension (any case) is one of IMAGE_EXTENSIONS."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def collect_images(source):
    """The images under ``source``, as a list of InputImage.

    - a folder: every image file below it, recursively, named by its path relative to the folder and sorted
      by that name. Files and folders whose name starts with "." are skipped: they are macOS AppleDouble
      files (``._img.jpg``), editor or notebook checkpoints and VCS metadata, never test images, and an
      AppleDouble file with an image extension would otherwise show up as a decode error.
    - an image file (by extension): that one image, named by its file name.
    - any other file: a list file, see `read_list_file`.

    Raises FileNotFoundError when ``source`` does not exist or a list entry is missing.
    """
    source = Path(source)
    if source.is_dir():
        return _collect_folder(source)
    if not source.exists():
        raise FileNotFoundError(f"no such image folder or list file: {source}")
    if is_image_path(source):
        return [InputImage(path=source, name=display_name(source.name))]
    return read_list_file(source)


def _collect_folder(folder):
    found = []
    # os.walk rather than Path.rglob: it lets us prune hidden folders instead of walking into them.
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith(".") or not is_image_path(filename):
                continue
            path = Path(dirpath) / filename
            found.append(InputImage(path=path, name=display_name(path.relative_to(folder).as_posix())))
    found.sort(key=lambda image: image.name)
    return found


def read_list_file(list_path):
    """The images named in a list file, in the file's order.

    One path per line, relative to the list file's folder (absolute paths are used as they are); blank
    lines and lines starting with "#" are skipped, and surrounding whitespace is stripped. An image listed
    twice is kept once (the first time), since results and labels are keyed by name. The image's name is the
    entry as written, with forward slashes and without a leading "./".

    Raises FileNotFoundError listing the entries that do not exist, so a typo fails before a long run starts,
    and ValueError when the file is not UTF-8 text (say an image or an archive given to --list by mistake).
    """
    list_path = Path(list_path)
    base = list_path.parent
    images, seen, missing = [], set(), []
    try:
        # utf-8-sig: a list saved by a Windows editor starts with a BOM, which would otherwise be part of entry 1.
        with open(list_path, encoding="utf-8-sig") as handle:
            lines = handle.readlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{display_name(str(list_path))}: not a list file (UTF-8 text, one image path per "
                         f"line): {exc.reason} at byte {exc.start}") from None
    for line_number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if os.path.isabs(entry) else base / entry
        if not path.is_file():
            missing.append(f"line {line_number}: {entry}")
            continue
        name = _entry_name(entry)
        if name in seen:
            continue
        seen.add(name)
        images.append(InputImage(path=path, name=name))
    if missing:
        shown = "; ".join(missing[:10]) + ("" if len(missing) <= 10 else f"; and {len(missing) - 10} more")
        raise FileNotFoundError(f"{display_name(str(list_path))}: {len(missing)} listed image(s) not found: {shown}")
    return images


def _entry_name(entry):
    name = entry.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def as_input_images(images):
    """Normalise what a caller passes as ``images`` to a list of InputImage.

    Accepts a folder or list-file path (str or PathLike: collected with `collect_images`), or an iterable of
    InputImage, ``(path, name)`` pairs, or bare paths (named by the path as given, with forward slashes).
    """
    if isinstance(images, (str, os.PathLike)):
        return collect_images(images)
    normalised = []
    for item in images:
        if isinstance(item, InputImage):
            path, name = item.path, item.name
        elif isinstance(item, (str, os.PathLike)):
            path = Path(item)
            name = path.as_posix()
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            path, name = Path(item[0]), str(item[1])
        else:
            raise TypeError(f"an image must be an InputImage, a (path, name) pair or a path, not {item!r}")
        # A caller's names may come straight from os.listdir: the same rule as collected names (module docstring).
        normalised.append(InputImage(path=path, name=display_name(name)))
    return normalised
