"""Test fixture: CloudEvents out.  The first path segment chooses the action; the JSON body
says what to make: {"type", "source", "data", "attributes", "sink", "data_hex"}."""
import asyncio


def handler(event, context):
    action = event['extensions']['request'].path.strip('/')
    spec = event['data'] if isinstance(event['data'], dict) else {}
    data = bytes.fromhex(spec['data_hex']) if 'data_hex' in spec else spec.get('data')
    args = (spec.get('type'), spec.get('source'), data, spec.get('attributes'))
    if action == 'reply':
        return event.cloud_event(*args)
    if action == 'plain':
        return {'type': spec.get('type')}
    try:
        if action == 'emit-kyma':  # Kyma's name and positional arguments
            return {'id': event.emitCloudEvent(*args)}
        return {'id': event.emit_cloud_event(*args, sink=spec.get('sink'))}
    except Exception as exc:  # the test reads what the handler could catch
        return {'error': str(exc), 'error_type': type(exc).__name__}


async def async_reply(event, context):
    await asyncio.sleep(0)
    return event.cloud_event('com.example.async', data={'async': True})
