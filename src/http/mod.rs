//! HTTP/1.1 server on monoio (io_uring): parser, connections, router, Matrix errors.
