"""The lab's torch-free core, shared by the HTTP layer (`server.api`, `server.pages`) and `worker/`:
settings, the database (engine, ORM models), the queue contract, the run state machine and the
artifact and metric stores. Nothing here imports torch, FastAPI, the HTTP layer or `worker`."""
