// serving._frontend: the gRPC front end of a serving worker, in C++ (gRPC's C++ library, Debian's libgrpc++).
//
// Why: grpc.aio spends about 0.3 ms of the event loop's CPU on every call before our code runs (its Cython
// layer, asyncio futures, the poller thread's hand-off), which caps a Python worker at about 3,000 calls/s
// whatever the model. Here gRPC runs on C++ threads that never hold the GIL; the hot unary methods (the
// "fast methods": KServe ModelInfer and the native Infer) reach Python as plain (id, bytes, metadata, deadline)
// tuples, many per wake-up, and their answers go back through one call each, written by a thread of this file's
// (the finisher). Every other method, streams and health included, is relayed message by message to the worker's
// grpc.aio server on a private Unix socket, so its behaviour is exactly what the grpc.aio server gives. Metadata
// a peer may send but gRPC would not let us send on is never passed on (IsSendable).
//
// The Python side (serving/frontend/__init__.py) owns the protocol logic; this file knows no message types.
//
// Threads: gRPC's own threads run every reaction below. Python calls `take` and `respond` from its event loop's
// thread, `shutdown` from a helper thread (see Python). The Frontend's shared state is under `mu` (calls and
// events) and `reply_mu` (answers for the finisher); a ProxyCall's under its own `mu_`.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/server_callback_handlers.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

namespace {

using grpc::ByteBuffer;
using grpc::Status;
using grpc::StatusCode;
using Metadata = std::vector<std::pair<std::string, std::string>>;

// What gRPC's Python server answers for a call over `maximum_concurrent_rpcs`; clients match on it
// (serving.errors.CONCURRENCY_LIMIT_DETAILS).
const char kConcurrencyLimit[] = "Concurrent RPC limit exceeded!";

enum EventKind { kRequest = 0, kCancel = 1 };

struct Event {
  int kind;
  uint64_t id;
  int method;
  std::vector<grpc::Slice> payload;
  size_t size = 0;
  Metadata metadata;
  double deadline;  // on the steady (CLOCK_MONOTONIC) clock, Python's time.monotonic(); < 0: none
};

// Metadata that belongs to the transport: never copied onto the relayed call, nor handed to Python. gRPC reserves
// the "grpc-" prefix for itself (a client may not send such a key as metadata of its own).
bool IsTransportKey(const grpc::string_ref& key) {
  if (key.size() > 0 && key.data()[0] == ':') return true;
  if (key.size() >= 5 && std::memcmp(key.data(), "grpc-", 5) == 0) return true;
  static const char* kTransport[] = {"te", "content-type", "user-agent", "host", "authority"};
  for (const char* name : kTransport) {
    if (key.size() == std::strlen(name) && std::memcmp(key.data(), name, key.size()) == 0) return true;
  }
  return false;
}

bool IsBinaryKey(const char* key, size_t size) { return size > 4 && std::memcmp(key + size - 4, "-bin", 4) == 0; }

// Whether gRPC lets an application send this pair: a key of [0-9a-z_.-] and, unless the key ends in "-bin", a
// value of printable ASCII. What a peer sends may be more than that (gRPC 1.51 receives a tab or a byte >= 0x80 in
// a value, an upper-case key), and passing such a pair on makes grpc++ abort the whole process
// (GRPC_CALL_ERROR_INVALID_METADATA): nothing received is sent on, nor handed to Python, unchecked.
bool IsSendable(const char* key, size_t key_size, const char* value, size_t value_size) {
  if (!grpc_header_key_is_legal(grpc_slice_from_static_buffer(key, key_size))) return false;
  return IsBinaryKey(key, key_size) ||
         grpc_header_nonbin_value_is_legal(grpc_slice_from_static_buffer(value, value_size)) != 0;
}

bool IsSendable(const grpc::string_ref& key, const grpc::string_ref& value) {
  return IsSendable(key.data(), key.size(), value.data(), value.size());
}

// The pairs of `from` to pass on to the relayed call's other side, or (`to_python`) to Python: there any value of
// a legal key goes, as grpc.aio hands it to its handlers (MetadataTuple decodes it).
Metadata CopyMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& from, bool to_python = false) {
  Metadata out;
  out.reserve(from.size());
  for (const auto& kv : from) {
    if (IsTransportKey(kv.first)) continue;
    bool passes = to_python ? grpc_header_key_is_legal(grpc_slice_from_static_buffer(kv.first.data(),
                                                                                      kv.first.size())) != 0
                            : IsSendable(kv.first, kv.second);
    if (!passes) continue;
    out.emplace_back(std::string(kv.first.data(), kv.first.size()), std::string(kv.second.data(), kv.second.size()));
  }
  return out;
}

// A caller's deadline on the steady clock (seconds), or -1 for none.
double SteadyDeadline(std::chrono::system_clock::time_point deadline) {
  auto left = deadline - std::chrono::system_clock::now();
  // An infinite deadline is far in the future (gpr_inf_future): years away means none.
  if (left > std::chrono::hours(24 * 365)) return -1.0;
  if (left < std::chrono::system_clock::duration::zero()) left = std::chrono::system_clock::duration::zero();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch() + left).count();
}

class Frontend;
class FastCall;

// Python's answer to a fast call, on its way to the finisher thread.
struct Reply {
  FastCall* call;
  int status;
  std::string details;
  Metadata trailing;
  grpc::Slice payload;
};

// One call of a fast method: in the Frontend's `pending` until Python answers it (or it is cancelled).
class FastCall final : public grpc::ServerUnaryReactor {
 public:
  FastCall(Frontend* frontend, grpc::CallbackServerContext* context, ByteBuffer* response)
      : frontend_(frontend), context_(context), response_(response) {}
  void OnCancel() override;
  void OnDone() override;

  Frontend* frontend_;
  grpc::CallbackServerContext* context_;
  ByteBuffer* response_;
  uint64_t id_ = 0;
};

// A call of any other method, relayed to the backend (the worker's grpc.aio server) message by message: the
// server side (this reactor) and the client side (`backend_`) feed each other, one message in flight each way.
class ProxyCall final : public grpc::ServerGenericBidiReactor {
 public:
  ProxyCall(Frontend* frontend, grpc::GenericCallbackServerContext* context);
  void Begin(grpc::GenericStub* stub);

  // Server side: the caller.
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  class Backend final : public grpc::ClientBidiReactor<ByteBuffer, ByteBuffer> {
   public:
    explicit Backend(ProxyCall* call) : call_(call) {}
    void OnReadInitialMetadataDone(bool ok) override;
    void OnReadDone(bool ok) override;
    void OnWriteDone(bool ok) override;
    void OnDone(const Status& status) override;

   private:
    ProxyCall* call_;
  };

  void Unref();
  // No more messages go to the backend (once): `half_close` tells it so (the caller half-closed); without it the
  // backend call is over already (it answered, failed or was cancelled) and only the hold goes.
  void StopWritingLocked(bool half_close);
  // No more messages are read from the backend (once).
  void StopReadingLocked();

  Frontend* frontend_;
  grpc::GenericCallbackServerContext* context_;
  grpc::ClientContext client_context_;
  Backend backend_;
  ByteBuffer from_caller_;
  ByteBuffer from_backend_;
  std::mutex mu_;
  bool writing_ = true;          // the backend call's write hold is held
  bool reading_ = true;          // the backend call's read hold is held
  bool backend_done_ = false;    // Backend::OnDone ran: no more operations on the backend call
  bool initial_sent_ = false;    // the caller has been sent (or will be sent with the first write) initial metadata
  std::atomic<int> refs_{2};     // the server side and the backend side, each released by its OnDone
};

class FastService final : public grpc::Service {
 public:
  FastService(Frontend* frontend, const std::vector<std::string>& methods);

 private:
  std::vector<std::string> names_;  // RpcServiceMethod keeps the pointers
};

class ProxyService final : public grpc::CallbackGenericService {
 public:
  explicit ProxyService(Frontend* frontend) : frontend_(frontend) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override;

 private:
  Frontend* frontend_;
};

class Frontend {
 public:
  std::string address;
  std::string backend;
  std::vector<std::string> fast_methods;
  int max_message_bytes = 4 << 20;
  int max_concurrent = 0;  // 0: no limit
  // The most metadata a call may carry. gRPC 1.51's default (8 KiB) refused calls grpc.aio takes (a long bearer
  // token); Python passes grpc.aio's hard limit (serving.frontend.MAX_METADATA_BYTES).
  int max_metadata_bytes = 16 << 10;
  bool share_port = false;
  bool tls = false;
  std::string cert_pem, key_pem, client_ca_pem;

  int event_fd = -1;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<grpc::GenericStub> stub;
  std::unique_ptr<FastService> fast_service;
  std::unique_ptr<ProxyService> proxy_service;
  std::atomic<int> active{0};  // calls in flight, for the concurrency limit

  std::mutex mu;
  std::vector<Event> inbound;                     // for Python
  std::unordered_map<uint64_t, FastCall*> pending;  // fast calls Python has not answered
  uint64_t next_id = 1;

  // Answers are finished on a thread of their own: gRPC's Finish writes the response on the calling thread
  // (HTTP/2 framing, the socket write), work that would otherwise hold up the event loop.
  std::mutex reply_mu;
  std::condition_variable reply_ready;
  std::vector<Reply> replies;
  bool finisher_idle = false;
  bool finisher_stop = false;
  std::thread finisher;

  ~Frontend() {
    StopFinisher();
    if (event_fd >= 0) close(event_fd);
  }

  void StartFinisher() {
    finisher = std::thread([this] { RunFinisher(); });
  }

  void StopFinisher() {
    if (!finisher.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(reply_mu);
      finisher_stop = true;
    }
    reply_ready.notify_one();
    finisher.join();
  }

  void QueueReply(Reply&& reply) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(reply_mu);
      replies.push_back(std::move(reply));
      wake = finisher_idle;
      finisher_idle = false;
    }
    if (wake) reply_ready.notify_one();
  }

  void RunFinisher();

  // A slot under the concurrency limit, or false (nothing taken).
  bool Admit() {
    int now = active.fetch_add(1) + 1;
    if (max_concurrent > 0 && now > max_concurrent) {
      active.fetch_sub(1);
      return false;
    }
    return true;
  }

  // Queue `event` for Python (under `mu`, held by the caller); true when the queue was empty, so that the caller
  // must Wake() the event loop once the lock is released (a non-empty queue has a wake-up on its way already).
  bool PushLocked(Event&& event) {
    bool was_empty = inbound.empty();
    inbound.push_back(std::move(event));
    return was_empty;
  }

  void Wake() {
    uint64_t one = 1;
    ssize_t written;
    do {
      written = write(event_fd, &one, sizeof one);
    } while (written < 0 && errno == EINTR);
  }

  grpc::ServerUnaryReactor* StartFast(grpc::CallbackServerContext* context, int method, const ByteBuffer* request,
                                      ByteBuffer* response) {
    if (!Admit()) {
      auto* refused = context->DefaultReactor();
      refused->Finish(Status(StatusCode::RESOURCE_EXHAUSTED, kConcurrencyLimit));
      return refused;
    }
    auto* call = new FastCall(this, context, response);
    Event event;
    event.kind = kRequest;
    event.method = method;
    if (!request->Dump(&event.payload).ok()) event.payload.clear();
    event.size = request->Length();
    event.metadata = CopyMetadata(context->client_metadata(), true);
    event.deadline = SteadyDeadline(context->deadline());
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu);
      call->id_ = event.id = next_id++;
      pending.emplace(call->id_, call);
      wake = PushLocked(std::move(event));
    }
    if (wake) Wake();
    return call;
  }

  // The call, taken out of `pending`, or null when it was answered or cancelled already. `alone`: no other fast
  // call is waiting for an answer.
  FastCall* Claim(uint64_t id, bool* alone = nullptr) {
    std::lock_guard<std::mutex> lock(mu);
    auto found = pending.find(id);
    if (found == pending.end()) return nullptr;
    FastCall* call = found->second;
    pending.erase(found);
    if (alone != nullptr) *alone = pending.empty();
    return call;
  }

  // Finish `reply` here and now, or false when the finisher thread is busy or has answers queued (they go first).
  bool FinishIfIdle(Reply* reply) {
    {
      std::lock_guard<std::mutex> lock(reply_mu);
      if (!finisher_idle || !replies.empty()) return false;
    }
    Finish(reply);
    return true;
  }

  void Finish(Reply* reply);

  void Cancelled(FastCall* call) {
    Event event;
    event.kind = kCancel;
    event.id = call->id_;
    event.method = -1;
    event.deadline = -1;
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto found = pending.find(call->id_);
      if (found == pending.end()) return;  // answered meanwhile
      pending.erase(found);
      wake = PushLocked(std::move(event));
    }
    if (wake) Wake();
    call->Finish(Status(StatusCode::CANCELLED, "Cancelled"));
  }
};

void Frontend::RunFinisher() {
  std::vector<Reply> batch;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(reply_mu);
      while (replies.empty() && !finisher_stop) {
        finisher_idle = true;
        reply_ready.wait(lock);
      }
      if (replies.empty()) return;  // stopping, and nothing left to finish
      batch.swap(replies);
    }
    for (Reply& reply : batch) Finish(&reply);
    batch.clear();
  }
}

void Frontend::Finish(Reply* reply) {
  FastCall* call = reply->call;
  if (reply->status == 0) *call->response_ = ByteBuffer(&reply->payload, 1);
  for (auto& kv : reply->trailing) {
    if (IsSendable(kv.first.data(), kv.first.size(), kv.second.data(), kv.second.size()))
      call->context_->AddTrailingMetadata(kv.first, kv.second);
  }
  call->Finish(reply->status == 0 ? Status::OK
                                  : Status(static_cast<StatusCode>(reply->status), std::move(reply->details)));
}

void FastCall::OnCancel() { frontend_->Cancelled(this); }

void FastCall::OnDone() {
  frontend_->active.fetch_sub(1);
  delete this;
}

FastService::FastService(Frontend* frontend, const std::vector<std::string>& methods) : names_(methods) {
  for (size_t index = 0; index < names_.size(); ++index) {
    AddMethod(new grpc::internal::RpcServiceMethod(names_[index].c_str(), grpc::internal::RpcMethod::NORMAL_RPC,
                                                   nullptr));
    int method = static_cast<int>(index);
    MarkMethodRawCallback(
        method, new grpc::internal::CallbackUnaryHandler<ByteBuffer, ByteBuffer>(
                    [frontend, method](grpc::CallbackServerContext* context, const ByteBuffer* request,
                                       ByteBuffer* response) {
                      return frontend->StartFast(context, method, request, response);
                    }));
  }
}

// ---- the proxy ---------------------------------------------------------------------------------------------

class RefusedCall final : public grpc::ServerGenericBidiReactor {
 public:
  explicit RefusedCall(const Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

grpc::ServerGenericBidiReactor* ProxyService::CreateReactor(grpc::GenericCallbackServerContext* context) {
  if (!frontend_->Admit()) return new RefusedCall(Status(StatusCode::RESOURCE_EXHAUSTED, kConcurrencyLimit));
  auto* call = new ProxyCall(frontend_, context);
  call->Begin(frontend_->stub.get());
  return call;
}

ProxyCall::ProxyCall(Frontend* frontend, grpc::GenericCallbackServerContext* context)
    : frontend_(frontend), context_(context), backend_(this) {
  for (auto& kv : CopyMetadata(context->client_metadata())) client_context_.AddMetadata(kv.first, kv.second);
  client_context_.set_deadline(context->deadline());
  // The backend is this process's own grpc.aio server: a call that arrives while it is still starting waits for
  // it (within the caller's deadline) rather than failing.
  client_context_.set_wait_for_ready(true);
}

void ProxyCall::Begin(grpc::GenericStub* stub) {
  stub->PrepareBidiStreamingCall(&client_context_, context_->method(), grpc::StubOptions(), &backend_);
  // Holds: the backend call must not end (Backend::OnDone) while this side may still start a write or a read
  // on it from a server-side reaction.
  backend_.AddMultipleHolds(2);
  backend_.StartRead(&from_backend_);
  backend_.StartCall();
  StartRead(&from_caller_);
}

void ProxyCall::StopWritingLocked(bool half_close) {
  if (!writing_) return;
  writing_ = false;
  if (!backend_done_) {
    // A half-close is only ever asked for with no write in flight (the next read from the caller starts once
    // the last write is done), which is when a client call may start one.
    if (half_close) backend_.StartWritesDone();
    backend_.RemoveHold();
  }
}

void ProxyCall::StopReadingLocked() {
  if (!reading_) return;
  reading_ = false;
  if (!backend_done_) backend_.RemoveHold();
}

void ProxyCall::OnReadDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ok && writing_ && !backend_done_) {
    backend_.StartWrite(&from_caller_);
  } else {
    StopWritingLocked(true);  // the caller half-closed (or went away): so does the backend call
  }
}

void ProxyCall::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ok && reading_ && !backend_done_) {
    backend_.StartRead(&from_backend_);
  } else {
    if (!ok && !backend_done_) client_context_.TryCancel();  // the caller is gone
    StopReadingLocked();
  }
}

void ProxyCall::OnCancel() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!backend_done_) client_context_.TryCancel();
}

void ProxyCall::OnDone() {
  frontend_->active.fetch_sub(1);
  Unref();
}

void ProxyCall::Unref() {
  if (refs_.fetch_sub(1) == 1) delete this;
}

void ProxyCall::Backend::OnReadInitialMetadataDone(bool ok) {
  std::lock_guard<std::mutex> lock(call_->mu_);
  if (!ok || call_->initial_sent_) return;
  for (auto& kv : CopyMetadata(call_->client_context_.GetServerInitialMetadata()))
    call_->context_->AddInitialMetadata(kv.first, kv.second);
}

void ProxyCall::Backend::OnReadDone(bool ok) {
  std::lock_guard<std::mutex> lock(call_->mu_);
  if (ok) {
    call_->initial_sent_ = true;  // the write sends initial metadata: what arrived of the backend's is in it
    call_->StartWrite(&call_->from_backend_);
  } else {
    // The backend's call is over (it sent its status, or failed): its status follows in OnDone, which must not
    // wait for the caller to send or close anything more.
    call_->StopReadingLocked();
    call_->StopWritingLocked(false);
  }
}

void ProxyCall::Backend::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(call_->mu_);
  if (ok) {
    if (call_->writing_) call_->StartRead(&call_->from_caller_);
  } else {
    call_->StopWritingLocked(false);  // the backend takes no more messages (it has answered, or failed)
  }
}

void ProxyCall::Backend::OnDone(const Status& status) {
  {
    std::lock_guard<std::mutex> lock(call_->mu_);
    call_->backend_done_ = true;
    call_->writing_ = call_->reading_ = false;
    for (auto& kv : CopyMetadata(call_->client_context_.GetServerTrailingMetadata()))
      call_->context_->AddTrailingMetadata(kv.first, kv.second);
  }
  call_->Finish(status);  // outside the lock: its completion runs reactions of this call
  call_->Unref();
}

// ---- the Python type -----------------------------------------------------------------------------------------

struct FrontendObject {
  PyObject_HEAD
  Frontend* frontend;
  bool started;
  bool stopped;
};

PyObject* New(PyTypeObject* type, PyObject*, PyObject*) {
  auto* self = reinterpret_cast<FrontendObject*>(type->tp_alloc(type, 0));
  if (self == nullptr) return nullptr;
  self->frontend = new Frontend();
  self->started = self->stopped = false;
  return reinterpret_cast<PyObject*>(self);
}

bool StringOf(PyObject* value, std::string* out, const char* what) {
  if (PyBytes_Check(value)) {
    out->assign(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    return true;
  }
  Py_ssize_t size;
  const char* text = PyUnicode_AsUTF8AndSize(value, &size);
  if (text == nullptr) {
    PyErr_Format(PyExc_TypeError, "%s must be str or bytes", what);
    return false;
  }
  out->assign(text, size);
  return true;
}

// Frontend(address, backend, fast_methods, max_message_bytes, max_concurrent, share_port, tls, max_metadata_bytes)
// tls: None, or (cert_pem, key_pem, client_ca_pem or None).
int Init(PyObject* object, PyObject* args, PyObject*) {
  auto* self = reinterpret_cast<FrontendObject*>(object);
  const char* address;
  const char* backend;
  PyObject* methods;
  int max_message, max_concurrent, share_port, max_metadata;
  PyObject* tls;
  if (!PyArg_ParseTuple(args, "ssOiipOi", &address, &backend, &methods, &max_message, &max_concurrent, &share_port,
                        &tls, &max_metadata))
    return -1;
  Frontend* frontend = self->frontend;
  frontend->address = address;
  frontend->backend = backend;
  frontend->max_message_bytes = max_message;
  frontend->max_concurrent = max_concurrent;
  frontend->max_metadata_bytes = max_metadata;
  frontend->share_port = share_port != 0;
  PyObject* iterator = PyObject_GetIter(methods);
  if (iterator == nullptr) return -1;
  frontend->fast_methods.clear();
  while (PyObject* item = PyIter_Next(iterator)) {
    std::string name;
    bool ok = StringOf(item, &name, "a fast method");
    Py_DECREF(item);
    if (!ok) {
      Py_DECREF(iterator);
      return -1;
    }
    frontend->fast_methods.push_back(name);
  }
  Py_DECREF(iterator);
  if (PyErr_Occurred()) return -1;
  if (tls != Py_None) {
    PyObject *cert, *key, *client_ca;
    if (!PyArg_ParseTuple(tls, "OOO", &cert, &key, &client_ca)) return -1;
    if (!StringOf(cert, &frontend->cert_pem, "the certificate") || !StringOf(key, &frontend->key_pem, "the key"))
      return -1;
    frontend->client_ca_pem.clear();
    if (client_ca != Py_None && !StringOf(client_ca, &frontend->client_ca_pem, "the client CA")) return -1;
    frontend->tls = true;
  }
  return 0;
}

void Dealloc(PyObject* object) {
  auto* self = reinterpret_cast<FrontendObject*>(object);
  Frontend* frontend = self->frontend;
  if (frontend != nullptr) {
    if (frontend->server && !self->stopped) {
      Py_BEGIN_ALLOW_THREADS;
      frontend->server->Shutdown(std::chrono::system_clock::now());
      frontend->server->Wait();
      Py_END_ALLOW_THREADS;
    }
    delete frontend;
  }
  Py_TYPE(object)->tp_free(object);
}

// start() -> the port bound. RuntimeError when the address cannot be bound.
PyObject* Start(PyObject* object, PyObject*) {
  auto* self = reinterpret_cast<FrontendObject*>(object);
  Frontend* frontend = self->frontend;
  if (self->started) {
    PyErr_SetString(PyExc_RuntimeError, "the front end was started already");
    return nullptr;
  }
  self->started = true;
  frontend->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (frontend->event_fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
  int port = 0;
  std::string error;
  Py_BEGIN_ALLOW_THREADS;
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(-1);  // the front end checks the caller's messages against the limit
  channel_args.SetMaxSendMessageSize(-1);
  // No bandwidth probing towards the backend: its flow-control window stays at the default, so a stream whose
  // backend has stopped reading (serving.servicers.kserve.MAX_STREAM_BYTES) holds little more in the relay.
  channel_args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  channel_args.SetInt(GRPC_ARG_MAX_METADATA_SIZE, 2 * frontend->max_metadata_bytes);  // the relay adds a little
  auto channel = grpc::CreateCustomChannel(frontend->backend, grpc::InsecureChannelCredentials(), channel_args);
  frontend->stub = std::make_unique<grpc::GenericStub>(channel);
  frontend->fast_service = std::make_unique<FastService>(frontend, frontend->fast_methods);
  frontend->proxy_service = std::make_unique<ProxyService>(frontend);
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (frontend->tls) {
    grpc::SslServerCredentialsOptions options(
        frontend->client_ca_pem.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                        : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    options.pem_root_certs = frontend->client_ca_pem;
    options.pem_key_cert_pairs.push_back({frontend->key_pem, frontend->cert_pem});
    credentials = grpc::SslServerCredentials(options);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(frontend->address, credentials, &port);
  builder.SetMaxReceiveMessageSize(frontend->max_message_bytes);
  builder.SetMaxSendMessageSize(frontend->max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, frontend->share_port ? 1 : 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, frontend->max_metadata_bytes);
  builder.RegisterService(frontend->fast_service.get());
  builder.RegisterCallbackGenericService(frontend->proxy_service.get());
  frontend->server = builder.BuildAndStart();
  if (!frontend->server || port == 0) {
    frontend->server.reset();
    error = "cannot listen on " + frontend->address;
  } else {
    frontend->StartFinisher();
  }
  Py_END_ALLOW_THREADS;
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  return PyLong_FromLong(port);
}

PyObject* Fileno(PyObject* object, PyObject*) {
  return PyLong_FromLong(reinterpret_cast<FrontendObject*>(object)->frontend->event_fd);
}

PyObject* MetadataTuple(const Metadata& metadata) {
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(metadata.size()));
  if (tuple == nullptr) return nullptr;
  for (size_t i = 0; i < metadata.size(); ++i) {
    const auto& key = metadata[i].first;
    const auto& value = metadata[i].second;
    // As grpc.aio gives them: bytes for a binary ("-bin") key, else str, decoded as UTF-8, or as latin-1 where that
    // fails (grpc.aio's fallback too).
    PyObject* text;
    if (IsBinaryKey(key.data(), key.size())) {
      text = PyBytes_FromStringAndSize(value.data(), static_cast<Py_ssize_t>(value.size()));
    } else {
      text = PyUnicode_DecodeUTF8(value.data(), static_cast<Py_ssize_t>(value.size()), nullptr);
      if (text == nullptr) {
        PyErr_Clear();
        text = PyUnicode_DecodeLatin1(value.data(), static_cast<Py_ssize_t>(value.size()), nullptr);
      }
    }
    PyObject* pair = text == nullptr ? nullptr : Py_BuildValue("(s#N)", key.data(), (Py_ssize_t)key.size(), text);
    if (pair == nullptr) {
      Py_DECREF(tuple);
      return nullptr;
    }
    PyTuple_SET_ITEM(tuple, i, pair);
  }
  return tuple;
}

// One event as Python's tuple, or null with a Python error set.
PyObject* EventTuple(const Event& event) {
  if (event.kind == kCancel) {
    return Py_BuildValue("(iKOOOO)", kCancel, (unsigned long long)event.id, Py_None, Py_None, Py_None, Py_None);
  }
  PyObject* payload = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(event.size));
  if (payload == nullptr) return nullptr;
  char* at = PyBytes_AS_STRING(payload);
  size_t copied = 0;
  for (const auto& slice : event.payload) {
    size_t n = std::min(slice.size(), event.size - copied);
    std::memcpy(at + copied, slice.begin(), n);
    copied += n;
  }
  PyObject* metadata = MetadataTuple(event.metadata);
  if (metadata == nullptr) {
    Py_DECREF(payload);
    return nullptr;
  }
  PyObject* deadline = event.deadline < 0 ? (Py_INCREF(Py_None), Py_None) : PyFloat_FromDouble(event.deadline);
  return Py_BuildValue("(iKiNNN)", kRequest, (unsigned long long)event.id, event.method, payload, metadata, deadline);
}

// take() -> [(kind, id, method, payload, metadata, deadline)]: what arrived since the last take (kind 0: a call of
// fast_methods[method], its deadline on time.monotonic()'s clock or None; kind 1: call `id` was cancelled, the
// other fields None). Reads the event fd first. A call that cannot be handed over (no memory for it) is answered
// INTERNAL here, and the others go on.
PyObject* Take(PyObject* object, PyObject*) {
  Frontend* frontend = reinterpret_cast<FrontendObject*>(object)->frontend;
  uint64_t count;
  while (read(frontend->event_fd, &count, sizeof count) < 0 && errno == EINTR) {
  }
  std::vector<Event> events;
  {
    std::lock_guard<std::mutex> lock(frontend->mu);
    events.swap(frontend->inbound);
  }
  PyObject* list = PyList_New(0);
  if (list == nullptr) return nullptr;
  for (const Event& event : events) {
    PyObject* item = EventTuple(event);
    if (item == nullptr || PyList_Append(list, item) < 0) {
      Py_XDECREF(item);
      PyErr_Clear();
      FastCall* call = event.kind == kRequest ? frontend->Claim(event.id) : nullptr;
      if (call != nullptr)
        frontend->QueueReply(Reply{call, static_cast<int>(StatusCode::INTERNAL), "the call could not be handed to "
                                   "Python (out of memory)", {}, grpc::Slice()});
      continue;
    }
    Py_DECREF(item);
  }
  return list;
}

// respond(id, status, details, trailing_metadata, payload): answer fast call `id` (status 0: OK with `payload`, a
// bytes-like object; else the gRPC status code, `details` and `trailing_metadata` ((key, value) str pairs)).
// A call that was cancelled meanwhile is ignored. Returns whether the call was still waiting.
PyObject* Respond(PyObject* object, PyObject* args) {
  Frontend* frontend = reinterpret_cast<FrontendObject*>(object)->frontend;
  unsigned long long id;
  int status;
  const char* details;
  Py_ssize_t details_size;
  PyObject* trailing;
  Py_buffer payload;
  if (!PyArg_ParseTuple(args, "Kis#Oy*", &id, &status, &details, &details_size, &trailing, &payload)) return nullptr;
  Metadata metadata;
  if (trailing != Py_None) {
    PyObject* items = PySequence_Fast(trailing, "trailing metadata must be a sequence of (key, value) pairs");
    if (items == nullptr) {
      PyBuffer_Release(&payload);
      return nullptr;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items); ++i) {
      PyObject* pair = PySequence_Fast_GET_ITEM(items, i);
      PyObject *key, *value;
      std::string key_text, value_text;
      if (!PyArg_ParseTuple(pair, "OO", &key, &value) || !StringOf(key, &key_text, "a metadata key") ||
          !StringOf(value, &value_text, "a metadata value")) {
        Py_DECREF(items);
        PyBuffer_Release(&payload);
        return nullptr;
      }
      metadata.emplace_back(std::move(key_text), std::move(value_text));
    }
    Py_DECREF(items);
  }
  bool alone = false;
  FastCall* call = frontend->Claim(id, &alone);
  if (call == nullptr) {
    PyBuffer_Release(&payload);
    Py_RETURN_FALSE;
  }
  Reply reply{call, status, std::string(details, details_size), std::move(metadata),
              status == 0 ? grpc::Slice(payload.buf, static_cast<size_t>(payload.len)) : grpc::Slice()};
  PyBuffer_Release(&payload);
  // The only call in flight is answered on this thread (waking the finisher would add to its latency); under
  // load the finisher takes the answers, and the event loop goes back to work at once.
  bool finished = false;
  if (alone) {
    Py_BEGIN_ALLOW_THREADS;
    finished = frontend->FinishIfIdle(&reply);
    Py_END_ALLOW_THREADS;
  }
  if (!finished) frontend->QueueReply(std::move(reply));
  Py_RETURN_TRUE;
}

// shutdown(grace): stop accepting calls, let those in flight finish for `grace` seconds, cancel the rest, and
// wait until every call is done. Blocks (without the GIL): the caller's event loop must keep answering fast
// calls meanwhile, so call it from another thread.
PyObject* Shutdown(PyObject* object, PyObject* args) {
  auto* self = reinterpret_cast<FrontendObject*>(object);
  double grace;
  if (!PyArg_ParseTuple(args, "d", &grace)) return nullptr;
  if (!self->frontend->server || self->stopped) Py_RETURN_NONE;
  self->stopped = true;
  Frontend* frontend = self->frontend;
  Py_BEGIN_ALLOW_THREADS;
  auto deadline = std::chrono::system_clock::now() +
                  std::chrono::microseconds(static_cast<long long>(grace > 0 ? grace * 1e6 : 0));
  frontend->server->Shutdown(deadline);
  frontend->server->Wait();
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"start", Start, METH_NOARGS, "Bind the address and start serving; returns the port."},
    {"fileno", Fileno, METH_NOARGS, "The event fd that becomes readable when take() has something."},
    {"take", Take, METH_NOARGS, "Fast calls and cancellations that arrived since the last take()."},
    {"respond", Respond, METH_VARARGS, "Answer a fast call."},
    {"shutdown", Shutdown, METH_VARARGS, "Stop serving within a grace period (blocking, without the GIL)."},
    {nullptr, nullptr, 0, nullptr},
};

PyTypeObject kFrontendType = {
    PyVarObject_HEAD_INIT(nullptr, 0) "serving.frontend._frontend.Frontend",
};

PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT, "_frontend", "The C++ gRPC front end of a serving worker (see frontend.cc).", -1, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__frontend() {
  kFrontendType.tp_basicsize = sizeof(FrontendObject);
  kFrontendType.tp_flags = Py_TPFLAGS_DEFAULT;
  kFrontendType.tp_doc = "A gRPC server on C++ threads: fast methods to Python, the rest proxied to a backend.";
  kFrontendType.tp_new = New;
  kFrontendType.tp_init = Init;
  kFrontendType.tp_dealloc = Dealloc;
  kFrontendType.tp_methods = kMethods;
  if (PyType_Ready(&kFrontendType) < 0) return nullptr;
  PyObject* module = PyModule_Create(&kModule);
  if (module == nullptr) return nullptr;
  Py_INCREF(&kFrontendType);
  if (PyModule_AddObject(module, "Frontend", reinterpret_cast<PyObject*>(&kFrontendType)) < 0) {
    Py_DECREF(&kFrontendType);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
