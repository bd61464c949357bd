"""Structured Data Capture: QuestionnaireResponse checks, ``$populate`` and ``$extract``.
Spec: https://hl7.org/fhir/uv/sdc/"""
