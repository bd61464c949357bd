"""``$apply``: PlanDefinition and ActivityDefinition application, the evaluation scope of a call,
and the CarePlan/RequestGroup result. Spec: https://hl7.org/fhir/R4/plandefinition-operation-apply.html"""
