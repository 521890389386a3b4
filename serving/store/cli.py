"""The `serving store` and `serving dataset` commands.

    serving store put-image FILE [--meta JSON]          prints the new id (last line)
    serving store put-json FILE [--kind K]              prints the new id (last line); --kind dataset validates
    serving store put-blob FILE --kind K                prints the new id (last line), e.g. --kind model
    serving store get ID [--out FILE] [--record]        prints a JSON document (or its record), or writes the blob
    serving store ls [--kind K] [--limit N]             one JSON record per line, oldest first (all, page by page)
    serving store check [--blobs]                       SQLite integrity (and blob checksums); exit 1 on problems
    serving store gc [--min-age S]                      remove orphan blobs left by crashes
    serving dataset import --coco FILE --images DIR     prints a summary, then the new dataset id (last line)
    serving dataset show ID                             prints the COCO document of a dataset

Every command takes --data-dir (default $SERVING_DATA_DIR or ./var). Errors: a message on stderr, exit 2 (the
StoreError is a ServingError, which serving.cli.main reports). The commands work on the files directly: they see
every document whoever owns it; the commands that write take --owner USER (a user of the server's token file),
without which what they store belongs to the anonymous user (serving.ownership: with tokens, admins only).
"""
import argparse
import json
import os
import sys
from pathlib import Path

from serving.cli_args import json_object
from serving.errors import BAD_REQUEST

DEFAULT_DATA_DIR = "./var"


def add_store_commands(subparsers):
    """Register `store` and `dataset` on the `serving` command's subparsers. Each leaf command sets `func`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=os.environ.get("SERVING_DATA_DIR", DEFAULT_DATA_DIR),
                        help="the store's folder, shared with the server [SERVING_DATA_DIR, default ./var]")

    owned = argparse.ArgumentParser(add_help=False, parents=[common])
    owned.add_argument("--owner", type=user_name, default=None,
                       help="the user the new documents belong to (default: the anonymous user)")

    store = subparsers.add_parser("store", help="the embedded store of images, JSON documents and models")
    store_commands = store.add_subparsers(dest="store_command", required=True)

    put_image = store_commands.add_parser("put-image", parents=[owned], help="store an image file; print its id")
    put_image.add_argument("file", type=Path)
    put_image.add_argument("--meta", type=json_object, default=None, help="JSON object kept with the image")
    put_image.set_defaults(func=cmd_put_image)

    put_json = store_commands.add_parser("put-json", parents=[owned], help="store a JSON file; print its id")
    put_json.add_argument("file", type=Path)
    put_json.add_argument("--kind", default="json", help="document kind (json, result, dataset, ...)")
    put_json.set_defaults(func=cmd_put_json)

    put_blob = store_commands.add_parser("put-blob", parents=[owned], help="store any file; print its id")
    put_blob.add_argument("file", type=Path)
    put_blob.add_argument("--kind", required=True, help="document kind, e.g. model")
    put_blob.set_defaults(func=cmd_put_blob)

    get = store_commands.add_parser("get", parents=[common], help="print a JSON document, or write a blob")
    get.add_argument("id")
    get.add_argument("--out", type=Path, default=None, help="write the document's bytes to this file")
    get.add_argument("--record", action="store_true", help="print the record (kind, size, meta) instead")
    get.set_defaults(func=cmd_get)

    ls = store_commands.add_parser("ls", parents=[common], help="list documents, one JSON record per line")
    ls.add_argument("--kind", default=None)
    ls.add_argument("--limit", type=int, default=None, help="only the newest N (default: every document)")
    ls.set_defaults(func=cmd_ls)

    check = store_commands.add_parser("check", parents=[common], help="check the database (and the blobs)")
    check.add_argument("--blobs", action="store_true", help="also verify every blob's size and SHA-256")
    check.set_defaults(func=cmd_check)

    gc = store_commands.add_parser("gc", parents=[common], help="remove orphan blobs left by interrupted writes")
    gc.add_argument("--min-age", type=float, default=3600.0, help="only files older than this many seconds")
    gc.set_defaults(func=cmd_gc)

    dataset = subparsers.add_parser("dataset", help="COCO datasets kept in the store")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)

    import_ = dataset_commands.add_parser("import", parents=[owned],
                                          help="store a COCO file and its images; print the dataset id")
    import_.add_argument("--coco", type=Path, required=True, help="COCO detection JSON")
    import_.add_argument("--images", type=Path, required=True, help="folder the file names are relative to")
    import_.set_defaults(func=cmd_dataset_import)

    synth = dataset_commands.add_parser(
        "synth", parents=[owned],
        help="generate industrial surface images with defects; store train/val/test; print their ids as JSON")
    synth.add_argument("--n", type=int, default=300, help="images in all (70%% train, 15%% val, 15%% test)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--test-surfaces", default="held_out",
                       help="surfaces of the test split: held_out (never seen in training) or train")
    synth.set_defaults(func=cmd_dataset_synth)

    show = dataset_commands.add_parser("show", parents=[common], help="print a dataset's COCO document")
    show.add_argument("id")
    show.set_defaults(func=cmd_dataset_show)


def user_name(text):
    """argparse type: a user name as the token file spells them."""
    from serving.auth import is_valid_user_name

    if not is_valid_user_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a user name (letters, digits and _ . @ -, 64 at most)")
    return text


def _open(args):
    from serving.store import Store

    return Store(args.data_dir, owner=getattr(args, "owner", None) or "")


def _read_file(path):
    from serving.store import StoreError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise StoreError(BAD_REQUEST, f"cannot read {path}: {exc.strerror}") from None


def _print_json(value, indent=None):
    try:
        text = json.dumps(value, indent=indent, ensure_ascii=False)
    except RecursionError:
        # The indenting encoder recurses deeper per level than the compact one that stored the document.
        text = json.dumps(value, ensure_ascii=False)
    print(text)


def cmd_put_image(args):
    data = _read_file(args.file)
    with _open(args) as store:
        print(store.put_image(data, meta={"file_name": args.file.name, **(args.meta or {})}))
    return 0


def cmd_put_json(args):
    from serving.store import DATASET_KIND, StoreError, put_dataset

    try:
        value = json.loads(_read_file(args.file))
    except ValueError as exc:
        raise StoreError(BAD_REQUEST, f"{args.file} is not JSON: {exc}") from None
    except RecursionError:  # json's parser recurses per nesting level
        raise StoreError(BAD_REQUEST, f"{args.file} nests too deeply to be read as JSON") from None
    with _open(args) as store:
        if args.kind == DATASET_KIND:
            print(put_dataset(store, value, meta={"source": args.file.name}))
        else:
            print(store.put_json(value, kind=args.kind, meta={"source": args.file.name}))
    return 0


def cmd_put_blob(args):
    data = _read_file(args.file)
    with _open(args) as store:
        print(store.put_blob(data, kind=args.kind, meta={"file_name": args.file.name}))
    return 0


def cmd_get(args):
    from serving.store import StoreError

    with _open(args) as store:
        record = store.get(args.id)
        if args.out is not None:
            data = store.read_blob(record.id)
            try:
                args.out.write_bytes(data)
            except OSError as exc:
                raise StoreError(BAD_REQUEST, f"cannot write {args.out}: {exc.strerror}") from None
            print(f"wrote {len(data)} bytes to {args.out}", file=sys.stderr)
        elif args.record or not record.is_json:
            _print_json(record.to_dict(), indent=2)
        else:
            _print_json(store.get_json(record.id), indent=2)
    return 0


def cmd_ls(args):
    with _open(args) as store:
        if args.limit is None:
            # Page by page (Store.iter_records): memory stays bounded however many documents there are.
            for record in store.iter_records(kind=args.kind):
                _print_json(record.to_dict())
            return 0
        records = store.list(kind=args.kind, limit=args.limit, newest_first=True)
    for record in reversed(records):  # the newest N, still printed oldest first
        _print_json(record.to_dict())
    return 0


def cmd_check(args):
    with _open(args) as store:
        problems = store.integrity_check(blobs=args.blobs)
    for problem in problems:
        print(problem)
    if not problems:
        print("ok")
    return 1 if problems else 0


def cmd_gc(args):
    with _open(args) as store:
        removed = store.gc(min_age_s=args.min_age)
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} file{'s' if len(removed) != 1 else ''} removed")
    return 0


def cmd_dataset_import(args):
    from serving.store import import_coco

    with _open(args) as store:
        dataset_id = import_coco(store, args.coco, args.images)
        meta = store.get(dataset_id).meta
    print(f"imported {meta['images']} images, {meta['annotations']} annotations, "
          f"{meta['categories']} categories from {args.coco}")
    print(dataset_id)
    return 0


def cmd_dataset_synth(args):
    import cv2

    from serving.store import StoreError
    from serving.store.datasets import put_image_dataset
    from serving.synth import make_splits

    if args.n < 3:
        raise StoreError(BAD_REQUEST, f"--n must be at least 3 (one image per split), got {args.n}")
    try:
        splits = make_splits(args.n, args.seed, test_surfaces=args.test_surfaces)
    except ValueError as exc:  # an unknown --test-surfaces: a usage mistake, not a crash
        raise StoreError(BAD_REQUEST, f"--test-surfaces: {exc}") from None
    ids = {}
    with _open(args) as store:
        for split, (images, coco) in splits.items():
            encoded = [cv2.imencode(".png", image)[1].tobytes() for image in images]
            ids[split] = put_image_dataset(store, encoded, coco,
                                           meta={"source": "synth", "split": split, "seed": args.seed})
    _print_json(ids)
    return 0


def cmd_dataset_show(args):
    from serving.store import load_dataset

    with _open(args) as store:
        _print_json(load_dataset(store, args.id), indent=2)
    return 0
