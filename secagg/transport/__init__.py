"""The gRPC transport of secagg: wire codec, servicer and client driver.

* :mod:`secagg.transport.codec`: protobuf <-> protocol messages with every size/shape check;
* :mod:`secagg.transport.errors`: the one table mapping errors to gRPC status codes;
* :mod:`secagg.transport.servicer`: the ``secagg.v1.Aggregator`` service (thin: decode, call the
  round coordinator, encode);
* :mod:`secagg.transport.client`: the client side of one round over a stream;
* :mod:`secagg.transport.tls`: channel security (TLS, mTLS, loopback-only plaintext).

Generated protobuf code lives in ``secagg/transport/_gen`` (``scripts/gen_proto.py``).
"""
