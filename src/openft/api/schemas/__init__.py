"""Wire models, one module per OpenAI resource, named after the spec's components."""
