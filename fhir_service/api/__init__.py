"""HTTP routers: they parse, call the engine, and serialize. No clinical logic here."""
