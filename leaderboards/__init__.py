"""Records in, pages out (HTML, markdown, CSV). Reads records only."""
