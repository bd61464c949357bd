"""Terminology: value-set membership (``membership``) and the ValueSet compose rules the service
honours (``valueset_compose``). Spec: https://hl7.org/fhir/R4/valueset.html"""
