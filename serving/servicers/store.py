"""The store's gRPC service (`serving.store.v1.Store`, protos/store.proto): put, get and list documents.

SQLite and file I/O block, so every call runs on a worker thread (`asyncio.to_thread`), never on the event loop.
Each call sees the store as its caller (serving.ownership): documents it puts belong to the caller, and another
user's documents answer NOT_FOUND as missing ones do.
"""
import asyncio
import json

from serving import codec
from serving.errors import BAD_REQUEST, INTERNAL, ServingError, abort_with
from serving.ownership import caller
from serving.proto import store_pb2 as pb
from serving.proto import store_pb2_grpc as pb_grpc
from serving.store.datasets import put_dataset
from serving.store.db import DATASET_KIND, IMAGE_KIND


def _document(record, data=b""):
    return pb.Document(id=record.id, kind=record.kind, created_at=record.created_at,
                       content_type=record.content_type, size=record.size, sha256=record.sha256,
                       meta=json.dumps(record.meta), data=data)


def _decode_json(data, what):
    try:
        return codec.parse_json(data.decode("utf-8"), what, want_object=False)
    except UnicodeDecodeError as exc:
        raise ServingError(BAD_REQUEST, f"{what} is not UTF-8: {exc}") from None


class StoreServicer(pb_grpc.StoreServicer):
    def __init__(self, get_store):
        # A callable: the server opens its store when a call first needs it, so a server that never stores
        # creates no files.
        self._get_store = get_store

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
        record = self.store.get(request.id)
        return _document(record, self.store.read_blob(request.id) if request.with_data else b"")

    def _list(self, request):
        records = self.store.list(request.kind or None, request.limit or None, newest_first=True)
        return pb.ListResponse(documents=[_document(record) for record in records])

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
