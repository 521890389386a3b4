"""The store's gRPC service (`serving.store.v1.Store`, protos/store.proto): put, get and list documents.

SQLite and file I/O block, so every call runs on a worker thread (`asyncio.to_thread`), never on the event loop.
Each call sees the store as its caller (serving.ownership): documents it puts belong to the caller, and another
user's documents answer NOT_FOUND as missing ones do.

Replies stay under the server's message size limit (`max_message_bytes`, what the server is built with), where
gRPC would otherwise refuse them with a bare RESOURCE_EXHAUSTED after the work was done: Get with data answers
413 for a document too large for one message before reading its blob, and List answers pages: at most `limit`
records (0: as many as one reply holds, which is every record of a store that could be listed before paging
existed, so older clients see no change), never more than MAX_PAGE_SIZE, newest first, cut short where the
next record would pass the limit, and a `next_page_token` while more follow.
"""
import asyncio
import base64
import binascii
import json

from serving import codec
from serving.errors import BAD_REQUEST, INTERNAL, PAYLOAD_TOO_LARGE, ServingError, abort_with
from serving.ownership import caller
from serving.proto import store_pb2 as pb
from serving.proto import store_pb2_grpc as pb_grpc
from serving.store import StoreError
from serving.store.datasets import put_dataset
from serving.store.db import DATASET_KIND, IMAGE_KIND, check_position

# The most records one List page reads (limit 0 or larger): bounds the memory of a call; the reply is cut shorter
# still where it would pass the message size limit.
MAX_PAGE_SIZE = 100_000
# Room left in a reply for what is not a document: the page token, field tags, gRPC framing.
_REPLY_RESERVE_BYTES = 4096
# Upper bound of the tag and length prefix of one embedded message or bytes field.
_FIELD_PREFIX_BYTES = 11


def _document(record, data=b""):
    return pb.Document(id=record.id, kind=record.kind, created_at=record.created_at,
                       content_type=record.content_type, size=record.size, sha256=record.sha256,
                       meta=json.dumps(record.meta), data=data)


def _page_token(record):
    """The opaque token of the page after `record`: its listing position (created_at, id)."""
    text = json.dumps(record.position)
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii")


def _position(token):
    """The listing position a page token carries; 400 when the token is not one this service issued."""
    try:
        return check_position(json.loads(base64.urlsafe_b64decode(token.encode("ascii"))))
    except (ValueError, RecursionError, binascii.Error, StoreError):
        raise ServingError(BAD_REQUEST, "page_token is not a token a List reply gave (send it back unchanged, "
                                        "with the same kind)") from None


def _decode_json(data, what):
    try:
        return codec.parse_json(data.decode("utf-8"), what, want_object=False)
    except UnicodeDecodeError as exc:
        raise ServingError(BAD_REQUEST, f"{what} is not UTF-8: {exc}") from None


class StoreServicer(pb_grpc.StoreServicer):
    def __init__(self, get_store, max_message_bytes=codec.DEFAULT_MAX_MESSAGE_BYTES):
        # A callable: the server opens its store when a call first needs it, so a server that never stores
        # creates no files.
        self._get_store = get_store
        # The server's max send message size: replies over it would fail in gRPC, after the work was done.
        self._max_message_bytes = int(max_message_bytes)

    @property
    def store(self):
        """The store as the current caller sees it (the thread running a call inherits the caller)."""
        return self._get_store().for_user(caller())

    def _put(self, request):
        meta = codec.parse_json(request.meta, "meta", want_object=True) if request.meta else None
        if request.kind == IMAGE_KIND:
            return self.store.put_image(request.data, meta)
        if request.kind == DATASET_KIND:
            return put_dataset(self.store, _decode_json(request.data, "the dataset"), meta)
        if request.kind == "json":
            return self.store.put_json(_decode_json(request.data, "data"), meta=meta)
        return self.store.put_blob(request.data, request.kind, meta)

    def _get(self, request):
        store = self.store
        document = _document(store.get(request.id))
        if not request.with_data:
            return document
        # Checked from the record, before the blob is read: a 40 MB model would otherwise be read into memory
        # only for gRPC to refuse the reply with a bare RESOURCE_EXHAUSTED.
        reply_bytes = document.ByteSize() + _FIELD_PREFIX_BYTES + document.size
        if reply_bytes > self._max_message_bytes:
            raise ServingError(PAYLOAD_TOO_LARGE, f"document {document.id} is {document.size} bytes, too large "
                                                  f"for one reply of this server (at most {self._max_message_bytes}"
                                                  " bytes a message, serve --max-message-mb): get its record "
                                                  "without data, or its bytes from the data folder with `serving "
                                                  f"store get {document.id} --out FILE`")
        document.data = store.read_blob(document.id)
        return document

    def _list(self, request):
        if request.limit < 0:
            raise ServingError(BAD_REQUEST, f"limit must be 0 (as many as one reply holds) or a page size, got "
                                            f"{request.limit}")
        page_size = min(request.limit or MAX_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _position(request.page_token) if request.page_token else None
        # One more than the page: whether a next page exists, without a count of every row.
        records = self.store.list(request.kind or None, page_size + 1, newest_first=True, after=after)
        more = len(records) > page_size
        budget = self._max_message_bytes - _REPLY_RESERVE_BYTES
        documents, used = [], 0
        for record in records[:page_size]:
            document = _document(record)
            size = document.ByteSize() + _FIELD_PREFIX_BYTES
            if used + size > budget:
                if not documents:  # even alone it could not be sent: say which, rather than loop on it
                    raise ServingError(PAYLOAD_TOO_LARGE, f"the record of {record.id} is {size} bytes (its meta), "
                                                          "too large for one reply of this server")
                more = True  # the rest follow on the next page
                break
            documents.append(document)
            used += size
        token = _page_token(records[len(documents) - 1]) if more else ""
        return pb.ListResponse(documents=documents, next_page_token=token)

    async def _call(self, context, work, request):
        try:
            return await asyncio.to_thread(work, request)
        except ServingError as exc:
            await abort_with(context, exc.code, exc.message)
        except Exception as exc:  # a bug of ours: the message, never a traceback, on the wire
            await abort_with(context, INTERNAL, f"store failed: {type(exc).__name__}")
        return None

    async def Put(self, request, context):
        doc_id = await self._call(context, self._put, request)
        return pb.PutResponse(id=doc_id)

    async def Get(self, request, context):
        return await self._call(context, self._get, request)

    async def List(self, request, context):
        return await self._call(context, self._list, request)
