"""Limits that keep one serving process's memory and work bounded whatever callers send (README "Reliability").

Where each limit lives and what a caller gets past it (all 4xx, or a retryable code for load):

    message size          --max-message-mb (32 MiB), gRPC itself     RESOURCE_EXHAUSTED (client: 413)
    calls at once         --max-concurrent-rpcs (DEFAULT_MAX_CONCURRENT_RPCS), gRPC itself, before the message
                          is decoded                                  RESOURCE_EXHAUSTED (client: 429, retry)
    images per call       serving.codec.MAX_INSTANCES_PER_CALL        413
    inputs per instance   serving.codec.MAX_INPUTS_PER_INSTANCE       413
    BYTES elements        serving.servicers.kserve.MAX_BYTES_ELEMENTS 413
    tensor shape          serving.servicers.kserve.MAX_DIMENSIONS, MAX_ELEMENTS (the bound of a shape with a 0,
                          which no byte count bounds)                 400
    stream in flight      serving.servicers.kserve.MAX_STREAM_IN_FLIGHT requests, MAX_STREAM_BYTES (64 MiB) of
                          them: the stream is not read further until answers go out
    images waiting        app.json queue_size (per app)               429 (retry)
    params / attribute    serving.codec.MAX_JSON_BYTES, MAX_JSON_DEPTH 400
    image bytes / pixels  evals.utils.image (10 MiB; a side over 4999 px, read from the header before decoding,
                          and OpenCV's pixel limit for other formats) 400
    process memory        serve --max-rss-mb: a worker over it is replaced (serving.workers)

So the most request data one process holds is about max_concurrent_rpcs x max_message_mb (a stream counts as
up to MAX_STREAM_BYTES, or one message when larger), and far less in practice: a call is refused before its
images are decoded once its app's queue is full.
"""

#: Calls one serving process runs at once (serve --max-concurrent-rpcs); more are refused at once.
DEFAULT_MAX_CONCURRENT_RPCS = 512
