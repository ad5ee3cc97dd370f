"""Test fixture: an async handler."""
import asyncio


async def handler(event, context):
    query = event['extensions']['request'].query
    if 'sleep' in query:
        await asyncio.sleep(float(query['sleep']))
        return 'slept'
    if 'fail' in query:
        raise RuntimeError('async failure marker')
    await asyncio.sleep(0)
    return {'async': True, 'data': event['data'], 'function': context['function-name']}
