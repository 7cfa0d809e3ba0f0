"""One APIRouter per resource: search, images, info. Handlers only translate HTTP to the engine."""
