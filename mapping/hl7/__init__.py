"""HL7 v2 wire format: tokenizer, escapes, date/times and data types mapped to FHIR types."""
