"""Django forms pieces: fields and widgets the admin uses, and the forms drawn from a JSON Schema.

- schema.py: a form stage's buttons, one Django form per outgoing type, built from the stage's payload schema.
- fields.py: JSONDocumentField, a JSON box with bounded nesting (the admin's payload and schemas).
- widgets.py: the admin's JSON editor and secret input.

The form *stages* (people opening, submitting and cancelling tasks) are a
lifecycle policy: they live in services/form_stages.py.
"""

from __future__ import annotations
