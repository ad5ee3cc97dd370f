const _ = require('lodash');

module.exports = {
  // The posted object, with the time it was handled added (in UTC).
  handler: (event, context) => {
    const date = new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
    return _.assign({}, event.data, { date });
  },
};
