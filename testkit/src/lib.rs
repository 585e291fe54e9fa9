//! Test harness (filled in by the saver helper): `RedisServer::start()`.
