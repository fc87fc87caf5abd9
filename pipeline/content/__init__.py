"""Message content: templates as data, sandboxed rendering, variable analysis, channel limits.

``pipeline.templates`` is the public face of this package (what the API and senders import); the
modules are split by concern:

    model      channels and their parts, language and variant resolution, rendering
    engine     the sandboxed Jinja2 environments, filters, the compiled-template cache
    analysis   syntax problems and unresolved variables, read from the AST
    limits     SMS encoding and segments, push/in-app lengths, email subject
    store      loading a template from PostgreSQL
"""
