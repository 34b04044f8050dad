"""What the client, the server and the exporter share: errors, wire and binary formats, the cell contract.

Only the standard library, numpy and pydantic are imported here, so the light client can use it."""
