//! Client-server and federation endpoints, registered on the HTTP router.
