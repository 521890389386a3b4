"""serving: an inference-serving runtime for eval.py apps (industrial vision).

Layout:
    serving.errors     the error vocabulary and its one mapping to gRPC status
    serving.config     app.json: defaults, validation, effective settings
    serving.apps       loading eval.py apps and running them (AppRegistry, App)
    serving.batching   pure merge/split of batches (no event loop, no server)
    serving.batcher    the per-app batch loop (bounded queue, window, preprocess pool, inference thread)
    serving.codec      conversions between wire messages and Python values, shared by server and client
    serving.server     the gRPC server: native service, health, reflection, metrics
    serving.client     Client and AsyncClient
    serving.cli        the `serving` command
    serving.harness    `serving test`: run a folder of images through an app, score, report
"""

__version__ = "0.1.0"
