"""Single-use download links: the view that redeems a link and hands out the file
(``views``) and the storage behind it, local files or an S3 bucket, with its presigned URLs
and grants (``storage``).
"""
