"""Version 1 of the API: the Node, Compute, Network and Metering services.

Each `X.proto` here has its generated `X_pb2` (messages), `X_pb2_grpc` (stubs and servicers)
and `X_pb2.pyi` (types). Do not edit the generated files: edit the .proto, then run
`python proto/generate.py`. The conventions shared by every service (ids, request_id,
generations, errors) are described at the top of `common.proto`.
"""
