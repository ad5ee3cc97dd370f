const _ = require('lodash');

module.exports = {
  handler: async (event, context) => {
    const words = String(event.data).split(' ');
    return { words: _.uniq(words).sort(), runtime: context.runtime };
  },
};
