"""Token classification for extraction tasks: BIO tags over the task's fields, served by Triton as
a JSON object of the fields with a per-field confidence (the request's is the minimum)."""
