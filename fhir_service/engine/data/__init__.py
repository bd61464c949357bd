"""The patient's data for one call: the patient filter, the reference resolver and ``to_json``
(``patient_data``), and the indexed data set FHIRPath reads (``dataset``)."""
