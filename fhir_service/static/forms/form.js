/*
 * The assessment page: renders a Questionnaire of this service in LHC-Forms, prefills it through
 * $populate, and on submit sends the QuestionnaireResponse to $extract and to the patient-view
 * CDS service, then shows the extracted resources and the cards.
 *
 * Population is done by the service ($populate), never in the browser: the Questionnaire's SDC
 * population extensions (launchContext, variable, initialExpression) read the call's data
 * (%Observation) and are removed before the form is handed to LHC-Forms.
 * LHC-Forms' QuestionnaireResponse has no subject: the page adds it, with status and authored.
 */
(function () {
  'use strict';

  var SDC = 'http://hl7.org/fhir/uv/sdc/StructureDefinition/';
  var POPULATION_EXTENSIONS = [
    'http://hl7.org/fhir/StructureDefinition/variable',
    SDC + 'sdc-questionnaire-initialExpression',
    SDC + 'sdc-questionnaire-launchContext'
  ];
  var OPTION_EXCLUSIVE = 'http://hl7.org/fhir/StructureDefinition/questionnaire-optionExclusive';
  var CDS_SERVICE = 'muscle-spasm-patient-view';
  var FHIR_JSON = 'application/fhir+json';
  var questionnaireId = document.body.dataset.questionnaireId;
  var state = { questionnaire: null };

  function $(id) { return document.getElementById(id); }
  function sleep(ms) { return new Promise(function (ok) { setTimeout(ok, ms); }); }

  function setStatus(text, kind) {
    var box = $('status');
    box.textContent = text;
    box.className = kind || '';
  }

  function loadScript(src) {
    return new Promise(function (ok, fail) {
      var script = document.createElement('script');
      script.src = src;
      script.onload = ok;
      script.onerror = function () { fail(new Error('cannot load ' + src)); };
      document.head.appendChild(script);
    });
  }

  async function waitForLForms() {
    for (var i = 0; i < 400 && !(window.LForms && window.LForms.Util); i++) await sleep(50);
    if (!(window.LForms && window.LForms.Util)) {
      throw new Error('LHC-Forms is not installed on this server (run scripts/browser-deps.sh)');
    }
    await customElements.whenDefined('wc-lhc-form');
    // The FHIR support must load after main.js has defined window.LForms.
    await loadScript('/forms/lforms/fhir/R4/lformsFHIR.min.js');
  }

  async function call(method, path, body, mediaType) {
    var type = mediaType || FHIR_JSON;
    var init = { method: method, headers: { Accept: type } };
    if (body !== undefined) {
      init.headers['Content-Type'] = type;
      init.body = JSON.stringify(body);
    }
    var response = await fetch(path, init);
    var text = await response.text();
    var json = null;
    try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
    return { status: response.status, ok: response.ok, json: json, text: text };
  }

  function outcomeText(result) {
    var issues = (result.json && result.json.issue) || [];
    var texts = issues.map(function (i) {
      return i.diagnostics || (i.details && i.details.text) || i.code;
    }).filter(Boolean);
    return 'HTTP ' + result.status + (texts.length ? ': ' + texts.join('; ') : '');
  }

  function withoutPopulation(node) {
    if (Array.isArray(node)) return node.map(withoutPopulation);
    if (!node || typeof node !== 'object') return node;
    var copy = {};
    Object.keys(node).forEach(function (key) {
      var value = node[key];
      if (key === 'extension' && Array.isArray(value)) {
        value = value.filter(function (e) { return POPULATION_EXTENSIONS.indexOf(e.url) < 0; });
        if (!value.length) return;
      }
      copy[key] = key === 'contained' ? value : withoutPopulation(value);
    });
    return copy;
  }

  function patientId() {
    return ($('patientId').value || '').trim().replace(/^Patient\//, '') || 'example';
  }

  async function render(response) {
    var form = window.LForms.Util.convertFHIRQuestionnaireToLForms(state.questionnaire, 'R4');
    if (response) {
      form = window.LForms.Util.mergeFHIRDataIntoLForms('QuestionnaireResponse', response, form, 'R4');
    }
    var container = $('formContainer');
    container.innerHTML = '';
    await window.LForms.Util.addFormToPage(form, 'formContainer', { fhirVersion: 'R4' });
    $('submit').disabled = false;
  }

  async function prefill() {
    var parameters = [{ name: 'subject', valueReference: { reference: 'Patient/' + patientId() } }];
    var text = $('patientData').value.trim();
    if (text) {
      var bundle;
      try { bundle = JSON.parse(text); } catch (e) {
        setStatus('The patient data is not JSON: ' + e.message, 'error');
        return;
      }
      parameters.push({ name: 'data', resource: bundle });
    }
    var result = await call('POST', '/fhir/Questionnaire/' + questionnaireId + '/$populate',
      { resourceType: 'Parameters', parameter: parameters });
    if (!result.ok) { setStatus('Prefill failed: ' + outcomeText(result), 'error'); return; }
    var response = result.json.parameter.find(function (p) { return p.name === 'response'; });
    await render(response.resource);
    var answered = JSON.stringify(response.resource).match(/"answer"/g) || [];
    setStatus('Prefilled ' + answered.length + ' answer(s) from the patient data.', 'ok');
  }

  function currentResponse(subjectId) {
    var container = $('formContainer');
    var qr = window.LForms.Util.getFormFHIRData('QuestionnaireResponse', 'R4', container);
    var q = state.questionnaire;
    qr.questionnaire = q.url + (q.version ? '|' + q.version : '');
    qr.status = 'completed';
    qr.subject = { reference: 'Patient/' + (subjectId || patientId()) };
    qr.authored = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    return qr;
  }

  // An answer option flagged questionnaire-optionExclusive ("None") cannot be combined with the
  // item's other answers (clinical-rules R2.7). LHC-Forms 40 does not read that extension, so the
  // page checks it before submitting; $extract refuses such a response as well.
  function exclusiveProblems(qr) {
    var exclusive = {};
    (function walk(items) {
      (items || []).forEach(function (item) {
        (item.answerOption || []).forEach(function (option) {
          var flagged = (option.extension || []).some(function (e) {
            return e.url === OPTION_EXCLUSIVE && e.valueBoolean === true;
          });
          if (!flagged || !option.valueCoding) return;
          var rule = exclusive[item.linkId] || (exclusive[item.linkId] = { text: item.text, codes: [], labels: [] });
          rule.codes.push(option.valueCoding.code);
          rule.labels.push(option.valueCoding.display || option.valueCoding.code);
        });
        walk(item.item);
      });
    })(state.questionnaire.item);
    var problems = [];
    (function walk(items) {
      (items || []).forEach(function (item) {
        var rule = exclusive[item.linkId];
        var answers = item.answer || [];
        var chosen = answers.some(function (a) {
          return a.valueCoding && rule && rule.codes.indexOf(a.valueCoding.code) >= 0;
        });
        if (chosen && answers.length > 1) {
          problems.push(rule.text + ': "' + rule.labels.join('" or "') + '" cannot be combined with other answers');
        }
        answers.forEach(function (a) { walk(a.item); });
        walk(item.item);
      });
    })(qr.item);
    return problems;
  }

  // What must be fixed before a completed response can be sent: LHC-Forms' own checks (required
  // items, value limits) and the exclusive answers.
  function formProblems(qr) {
    var invalid = window.LForms.Util.checkValidity($('formContainer')) || [];
    return invalid.concat(exclusiveProblems(qr));
  }

  function showExtracted(bundle, target) {
    var list = target || $('extracted');
    list.innerHTML = '';
    var entries = (bundle && bundle.entry) || [];
    if (!entries.length) {
      var none = document.createElement('li');
      none.textContent = 'Nothing to extract from these answers.';
      list.appendChild(none);
    }
    entries.forEach(function (entry) {
      var r = entry.resource;
      var coding = (r.code && r.code.coding && r.code.coding[0]) || {};
      var value = r.valueInteger !== undefined ? r.valueInteger
        : r.valueCodeableConcept ? (r.valueCodeableConcept.coding[0].display || r.valueCodeableConcept.coding[0].code)
        : r.onsetDateTime ? 'onset ' + r.onsetDateTime : '';
      var item = document.createElement('li');
      item.className = 'extracted-' + r.resourceType;
      item.textContent = entry.request.method + ' ' + r.resourceType + ': ' +
        (coding.display || coding.code || '') + (value !== '' ? ' = ' + value : '');
      list.appendChild(item);
    });
  }

  function showCards(cards) {
    var box = $('cards');
    box.innerHTML = '';
    if (!cards.length) {
      box.textContent = 'No recommendation for these answers.';
      return;
    }
    cards.forEach(function (card) {
      var div = document.createElement('div');
      div.className = 'card ' + (card.indicator || 'info');
      var title = document.createElement('h3');
      title.textContent = '[' + (card.indicator || 'info') + '] ' + card.summary;
      div.appendChild(title);
      if (card.detail) {
        var detail = document.createElement('div');
        detail.className = 'detail';
        detail.textContent = card.detail;
        div.appendChild(detail);
      }
      (card.suggestions || []).forEach(function (s) {
        var p = document.createElement('div');
        p.className = 'suggestion';
        p.textContent = 'Suggestion: ' + s.label;
        div.appendChild(p);
      });
      var source = document.createElement('div');
      source.className = 'source';
      source.textContent = (card.source && card.source.label) || '';
      if (card.source && card.source.topic) source.textContent += ' — ' + card.source.topic.code;
      div.appendChild(source);
      box.appendChild(div);
    });
  }

  function uuid() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return 'xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx'.replace(/x/g, function () {
      return (Math.random() * 16 | 0).toString(16);
    });
  }

  async function recommendations(qr) {
    // The response goes in the prefetch key whose template reads QuestionnaireResponses
    // ('assessment' when discovery cannot be read); every other declared key is sent as null
    // (no data, never fetched), since this page has no FHIR server to offer.
    var searchset = { resourceType: 'Bundle', type: 'searchset', total: 1, entry: [{ resource: qr }] };
    var templates = {};
    var discovery = await call('GET', '/cds-services', undefined, 'application/json');
    if (discovery.ok && discovery.json && discovery.json.services) {
      var service = discovery.json.services.find(function (s) { return s.id === CDS_SERVICE; });
      templates = (service && service.prefetch) || {};
    }
    var keys = Object.keys(templates);
    var qrKey = keys.find(function (k) { return /^QuestionnaireResponse\b/.test(templates[k]); });
    var prefetch = {};
    keys.forEach(function (key) { prefetch[key] = null; });
    prefetch[qrKey || 'assessment'] = searchset;
    var request = {
      hook: 'patient-view',
      hookInstance: uuid(),
      context: { userId: 'Practitioner/example', patientId: patientId() },
      prefetch: prefetch
    };
    return call('POST', '/cds-services/' + CDS_SERVICE, request, 'application/json');
  }

  async function submit() {
    var qr = currentResponse();
    window.__lastResponse = qr;
    var problems = formProblems(qr);
    if (problems.length) {
      setStatus('Please complete the assessment: ' + problems.join('; '), 'error');
      window.__submitted = true;
      return;
    }
    $('results').hidden = false;
    setStatus('Submitting…');
    var extracted = await call('POST', '/fhir/QuestionnaireResponse/$extract', qr);
    window.__lastExtract = extracted;
    if (extracted.ok) showExtracted(extracted.json);
    else $('extracted').textContent = 'Extraction failed: ' + outcomeText(extracted);
    var cds = await recommendations(qr);
    window.__lastCds = cds;
    if (cds.ok && cds.json) showCards(cds.json.cards || []);
    else $('cards').textContent = 'The guideline service did not answer: ' + outcomeText(cds);
    var ok = extracted.ok && cds.ok;
    setStatus(ok ? 'Assessment submitted.' : 'Assessment submitted with errors (see below).',
      ok ? 'ok' : 'error');
    window.__submitted = true;
  }

  function guard(fn) {
    return function () {
      fn().catch(function (e) { setStatus(e.message || String(e), 'error'); });
    };
  }

  async function loadQuestionnaire(canonical) {
    if (!canonical) {
      var result = await call('GET', '/fhir/Questionnaire/' + encodeURIComponent(questionnaireId));
      if (!result.ok) throw new Error('Cannot load the questionnaire: ' + outcomeText(result));
      return result.json;
    }
    var parts = canonical.split('|');
    var query = '?url=' + encodeURIComponent(parts[0]) + (parts[1] ? '&version=' + encodeURIComponent(parts[1]) : '');
    var found = await call('GET', '/fhir/Questionnaire' + query);
    var entry = found.ok && found.json && (found.json.entry || [])[0];
    if (!entry) throw new Error('The EHR asked for a questionnaire this service does not hold: ' + canonical);
    questionnaireId = entry.resource.id;
    return entry.resource;
  }

  // What the SMART app (smart.js) uses of this page.
  var api = {
    state: state,
    call: call,
    outcomeText: outcomeText,
    setStatus: setStatus,
    render: render,
    currentResponse: currentResponse,
    showExtracted: showExtracted,
    showCards: showCards,
    questionnaireId: function () { return questionnaireId; }
  };

  async function start() {
    await waitForLForms();
    var smart = window.SmartAssessment && window.SmartAssessment.launched();
    var session = null;
    if (smart) {
      setStatus('Connecting to the EHR…');
      session = await window.SmartAssessment.connect();
    }
    var questionnaire = await loadQuestionnaire(session && session.questionnaire);
    state.source = questionnaire; // with its population extensions (what $populate reads)
    state.questionnaire = withoutPopulation(questionnaire);
    $('title').textContent = questionnaire.title || questionnaire.name || 'Questionnaire';
    document.title = $('title').textContent;
    var params = new URLSearchParams(window.location.search);
    if (params.get('patient')) $('patientId').value = params.get('patient');
    await render(null);
    setStatus('Ready.');
    if (session) {
      await window.SmartAssessment.start(session, api);
    } else {
      $('prefill').addEventListener('click', guard(prefill));
      $('submit').addEventListener('click', guard(submit));
    }
    window.__ready = true;
  }

  window.addEventListener('load', function () {
    start().catch(function (e) {
      setStatus(e.message || String(e), 'error');
      window.__failed = e.message || String(e);
    });
  });
})();
