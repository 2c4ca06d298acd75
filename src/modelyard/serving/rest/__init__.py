"""The REST transport: the ASGI app of V1 and V2 routes, and its JSON and binary codec."""
