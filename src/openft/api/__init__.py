"""The HTTP API: FastAPI routers and OpenAI wire schemas; routes call services only."""
