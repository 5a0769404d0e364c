#!/usr/bin/env node
/**
 * The `roboflow` executable: bundled into `dist/bin/roboflow.js` by `scripts/bundle-cli.mjs`.
 */
import { runAsProcess } from './main.js';

runAsProcess();
