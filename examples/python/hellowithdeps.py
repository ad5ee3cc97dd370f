import requests


def handler(event, context):
    # Shows that a real dependency, with its own native parts, was installed for the image's Python.
    import charset_normalizer

    return {
        "requests": requests.__version__,
        "charset_normalizer": charset_normalizer.__version__,
        "data": event["data"],
    }
