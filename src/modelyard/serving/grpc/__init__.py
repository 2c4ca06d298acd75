"""The gRPC transport: the Open Inference Protocol servicer and its protobuf codec."""
