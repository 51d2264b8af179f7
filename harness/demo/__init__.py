"""The bundled demos' models (reached by builder name, imported by nothing)."""
