"""``python -m fhir_service``: serve the app (fhir_service/serve.py)."""

from fhir_service.serve import main

main()
